//! The `signing` benchmark: receipts (ES256 compact JWS) signed with the key
//! in this process's memory, as ingest signs them today
//! (`evidence::receipt::ReceiptSigner`, aws-lc-rs, key read from Vault once
//! at start-up), against the same receipts signed by OpenBao's transit
//! engine (`POST <mount>/sign/<key>`, `ecdsa-p256`, JWS marshalling, through
//! vaultrs over HTTP to the local OpenBao), at 1 and 16 signers in flight,
//! interleaved slice by slice.
//!
//! The transit engine is mounted for the run only, at `bench-<run id>-transit`
//! on the local OpenBao (root token from `.run/state/vault-root-token`), and
//! disabled at the end however the run ends (error or Ctrl-C). Before
//! measuring, one transit receipt is verified with
//! `evidence::receipt::verify_receipt` against the transit key's public half,
//! the way any holder of the platform's JWKS verifies receipts. See
//! docs/benchmarks.md.

use crate::compare::{self, Point, cell};
use crate::cpu::{CpuProbe, Scope};
use crate::harness::{Benchmark, Context};
use crate::load::CallFn;
use crate::local;
use crate::report::{Report, rounded};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use evidence::receipt::{
    RECEIPT_ISSUER, RECEIPT_TYPE, ReceiptClaims, ReceiptSigner, verify_receipt,
};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use vaultrs::api::transit::requests::{CreateKeyRequest, SignDataRequest};
use vaultrs::api::transit::responses::ReadKeyData;
use vaultrs::api::transit::{KeyType, MarshalingAlgorithm};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

/// Signers in flight at each point.
const IN_FLIGHT: [usize; 2] = [1, 16];
/// The transit key's name inside the run's mount.
const KEY_NAME: &str = "receipts";

/// See the module documentation.
pub struct SigningBenchmark;

impl Benchmark for SigningBenchmark {
    fn name(&self) -> &'static str {
        "signing"
    }

    fn about(&self) -> &'static str {
        "ES256 receipts/s signed in memory (aws-lc-rs) vs through OpenBao transit, 1/16 in flight"
    }

    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, anyhow::Result<Report>> {
        run(ctx).boxed()
    }

    fn cleans_up_on_interrupt(&self) -> bool {
        true
    }
}

async fn run(ctx: &Context) -> anyhow::Result<Report> {
    let addr = format!("http://127.0.0.1:{}", local::VAULT_PORT);
    let token = local::vault_root_token()?;
    let settings = VaultClientSettingsBuilder::default()
        .address(&addr)
        .token(token)
        .timeout(Some(Duration::from_secs(30)))
        .build()?;
    let vault = Arc::new(VaultClient::new(settings)?);
    let mount = ctx.namespace("transit");
    vaultrs::sys::mount::enable(&*vault, &mount, "transit", None)
        .await
        .map_err(|e| anyhow::anyhow!("enabling transit at {mount} on {addr}: {e}"))?;
    eprintln!("bench: transit mounted at {mount} on {addr}");
    let outcome = measure_all(ctx, &vault, &mount).await;
    match vaultrs::sys::mount::disable(&*vault, &mount).await {
        Ok(()) => eprintln!("bench: transit at {mount} disabled (its key is gone)"),
        Err(e) => eprintln!("bench: cannot disable the transit mount {mount}: {e}"),
    }
    outcome
}

/// Receipt claims of a made-up package: what ingest signs per package.
fn claims(n: u64) -> ReceiptClaims {
    let seed = n.to_be_bytes();
    let now = platform::clock::now();
    ReceiptClaims {
        package_id: uuid::Uuid::new_v4(),
        submitter_id: rpc_contracts::SubmitterId::parse("operator-01").expect("a valid id"),
        sha256: evidence::sha256_hex(&seed),
        size: 1_234_567,
        records: 10_000,
        // As stored and signed: whole microseconds.
        received_at: now
            .replace_nanosecond(now.microsecond() * 1000)
            .unwrap_or(now),
    }
}

/// Signs receipts with a transit key: the same header and payload as
/// [`ReceiptSigner`], the signature from `<mount>/sign/<key>`.
struct TransitSigner {
    vault: Arc<VaultClient>,
    mount: String,
    /// `base64url(header JSON) + "."`.
    header_b64: String,
}

impl TransitSigner {
    async fn sign(&self, claims: &ReceiptClaims) -> Result<String, String> {
        let payload = serde_json::json!({
            "iss": RECEIPT_ISSUER,
            "iat": claims.received_at.unix_timestamp(),
            "package_id": claims.package_id,
            "submitter_id": claims.submitter_id,
            "sha256": claims.sha256,
            "size": claims.size,
            "records": claims.records,
            "received_at": claims.received_at.format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| e.to_string())?,
        });
        let mut token = self.header_b64.clone();
        URL_SAFE_NO_PAD.encode_string(payload.to_string(), &mut token);
        let signed = vaultrs::transit::data::sign(
            &*self.vault,
            &self.mount,
            KEY_NAME,
            &STANDARD.encode(token.as_bytes()),
            Some(SignDataRequest::builder().marshaling_algorithm(MarshalingAlgorithm::Jws)),
        )
        .await
        .map_err(|e| e.to_string())?;
        // `vault:v<version>:<base64url r‖s>` with JWS marshalling.
        let signature = signed
            .signature
            .rsplit(':')
            .next()
            .ok_or_else(|| format!("unexpected signature {:?}", signed.signature))?;
        token.push('.');
        token.push_str(signature);
        Ok(token)
    }
}

async fn measure_all(
    ctx: &Context,
    vault: &Arc<VaultClient>,
    mount: &str,
) -> anyhow::Result<Report> {
    vaultrs::transit::key::create(
        &**vault,
        mount,
        KEY_NAME,
        Some(CreateKeyRequest::builder().key_type(KeyType::EcdsaP256)),
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating the transit key: {e}"))?;
    let key = vaultrs::transit::key::read(&**vault, mount, KEY_NAME).await?;
    let ReadKeyData::Asymmetric(versions) = key.keys else {
        anyhow::bail!("the transit key has no public key");
    };
    let pem = &versions
        .get("1")
        .ok_or_else(|| anyhow::anyhow!("the transit key has no version 1"))?
        .public_key;
    let public = evidence::PublicKey::from_spki_pem(pem)?;
    let kid = public.key_id();
    let header = serde_json::json!({"typ": RECEIPT_TYPE, "alg": "ES256", "kid": kid.as_str()});
    let mut header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
    header_b64.push('.');
    let transit = Arc::new(TransitSigner {
        vault: vault.clone(),
        mount: mount.to_owned(),
        header_b64,
    });
    let memory = Arc::new(ReceiptSigner::generate());

    // Proof that transit makes real ES256 receipts: verified as any
    // holder of the JWKS verifies them.
    let mut jwk = public.jwk();
    if let Some(members) = jwk.as_object_mut() {
        members.insert("kid".into(), kid.as_str().into());
        members.insert("use".into(), "sig".into());
        members.insert("alg".into(), "ES256".into());
    }
    let sample = claims(0);
    let receipt = transit
        .sign(&sample)
        .await
        .map_err(|e| anyhow::anyhow!("transit sign: {e}"))?;
    let verified = verify_receipt(&receipt, std::slice::from_ref(&jwk))
        .map_err(|e| anyhow::anyhow!("the transit receipt does not verify: {e}"))?;
    anyhow::ensure!(
        verified.package_id == sample.package_id && verified.sha256 == sample.sha256,
        "the transit receipt verified with other claims"
    );
    let memory_receipt = memory.sign(&sample)?;
    verify_receipt(&memory_receipt, &[memory.jwk()])
        .map_err(|e| anyhow::anyhow!("the in-memory receipt does not verify: {e}"))?;
    eprintln!(
        "bench: a transit receipt ({} bytes) verified with the transit key's public JWK (kid {})",
        receipt.len(),
        kid.as_str()
    );

    let watched = local::watched_servers(&[("openbao", local::VAULT_PORT, Scope::Process)]);
    let probe = ctx.cpu.watching(watched);
    let counter = Arc::new(AtomicU64::new(1));
    let mut points = Vec::new();
    for &n in &IN_FLIGHT {
        let variants = vec![
            ("memory", memory_call(memory.clone(), counter.clone())),
            ("transit", transit_call(transit.clone(), counter.clone())),
        ];
        if let Some(p) = compare::measure(ctx, &probe, n, "", variants, points.len()).await? {
            points.push(p);
        }
    }
    Ok(report(ctx, &probe, &points, receipt.len()))
}

fn memory_call(signer: Arc<ReceiptSigner>, counter: Arc<AtomicU64>) -> CallFn {
    Arc::new(move || {
        let claims = claims(counter.fetch_add(1, Ordering::Relaxed));
        let outcome = signer.sign(&claims).map(drop).map_err(|e| e.to_string());
        // A call that never waits would keep its worker thread from the
        // timer that closes the window: hand it back once per call.
        Box::pin(async move {
            tokio::task::yield_now().await;
            outcome
        })
    })
}

fn transit_call(signer: Arc<TransitSigner>, counter: Arc<AtomicU64>) -> CallFn {
    Arc::new(move || {
        let signer = signer.clone();
        let claims = claims(counter.fetch_add(1, Ordering::Relaxed));
        Box::pin(async move { signer.sign(&claims).await.map(drop) })
    })
}

fn report(ctx: &Context, probe: &CpuProbe, points: &[Point], receipt_bytes: usize) -> Report {
    let mut r = Report::new(
        format!(
            "signing: ES256 receipts signed in memory (aws-lc-rs) vs by OpenBao transit (closed loop; \
             {:?} measured per variant and point, in {} alternating slices each after {:?} of warm-up)",
            ctx.shape.duration, ctx.shape.rounds, ctx.shape.warmup
        ),
        &[
            "in flight",
            "memory signs/s",
            "memory p50 ms",
            "memory p99 ms",
            "transit signs/s",
            "transit p50 ms",
            "transit p99 ms",
            "transit/memory",
            "memory µs CPU",
            "transit µs CPU bench + openbao",
        ],
    );
    let openbao = probe.watched().iter().position(|w| w.name == "openbao");
    for p in points {
        let (m, t) = (p.get("memory"), p.get("transit"));
        let ratio = p.rps_ratio("transit", "memory");
        let transit_cpu =
            t.and_then(|t| Some(t.own_cpu_us_per_call()? + t.watched_cpu_us_per_call(openbao?)?));
        r.row(vec![
            p.title.clone(),
            cell(m.map(|m| m.rps()), 0),
            cell(m.map(|m| m.latency_ms(0.5)), 3),
            cell(m.map(|m| m.latency_ms(0.99)), 3),
            cell(t.map(|m| m.rps()), 0),
            cell(t.map(|m| m.latency_ms(0.5)), 2),
            cell(t.map(|m| m.latency_ms(0.99)), 2),
            cell(ratio, 4),
            cell(m.and_then(|m| m.own_cpu_us_per_call()), 1),
            cell(transit_cpu, 0),
        ]);
        compare::variant_figures(&mut r, probe, p);
        if let Some(ratio) = ratio {
            r.figure(
                format!("ratio_transit_vs_memory_{}", p.key),
                rounded(ratio, 5),
            );
        }
        if let Some(cpu) = transit_cpu {
            r.figure(
                format!("transit_cpu_us_per_sign_total_{}", p.key),
                rounded(cpu, 1),
            );
        }
    }
    r.figure("receipt_bytes", receipt_bytes as u64);
    r.note(
        "memory = ReceiptSigner::sign (payload JSON, base64url, ECDSA P-256 with aws-lc-rs, key \
         parsed once), as ingest does per package; transit = the same header and payload, signed \
         by POST <mount>/sign/receipts (ecdsa-p256, marshaling_algorithm=jws) with vaultrs over \
         HTTP/1.1 to the local OpenBao (dev mode, in-memory storage). Each receipt has its own \
         package id, digest and time. ratio = transit signs/s / memory signs/s.",
    );
    compare::process_table(
        &mut r,
        probe,
        &points.iter().collect::<Vec<_>>(),
        "openbao = the OpenBao server on 8200 (shared with other work on this machine).",
    );
    r
}
