# Ingest: verifies signed packages, stores the evidence in MinIO and the
# records in the Citus cluster, answers receipts over RPC.
#
# Each allocation first runs `ingest migrate` (a prestart task) with the
# owner of the ingest database, a deploy-time credential of its own Vault
# identity (`tallyhouse-cluster-ingest-migrate`, the `cluster` part of
# deployment/vault/secrets.json) rendered into the migrate task's secrets
# directory only; then `ingest serve` runs as the service role, which may
# only SELECT and INSERT: its logins are leased from Vault's database secrets
# engine (role tallyhouse-ingest), members of that role. Migrations are idempotent and take a lock, so instances
# starting together are safe. The ingest-partitions batch job runs the same
# command daily to keep partitions ahead (nomad-jobs/batch/).

variable "datacenters" {
  description = "Nomad datacenters the job may run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "environment" {
  description = "Deployment name (dev, prod...): TALLYHOUSE_ENVIRONMENT, a log label."
  type        = string
  default     = "dev"
}

variable "vault_addr" {
  description = "Vault address as seen from the tasks (VAULT_ADDR)."
  type        = string
  default     = "https://vault.service.consul:8200"
}

variable "audience" {
  description = "This deployment's name in signed packages (TALLYHOUSE_AUDIENCE): packages must be signed for it."
  type        = string
  default     = "tallyhouse-dev"
}

variable "require_citus" {
  description = "Make `ingest migrate` fail unless the citus extension exists in the ingest database (TALLYHOUSE_REQUIRE_CITUS)."
  type        = bool
  default     = true
}

variable "retention_days" {
  description = "Records retention in days (TALLYHOUSE_RETENTION_DAYS): older partitions are archived, then dropped; above the record age limit (400)."
  type        = number
  default     = 1830
}

variable "blob_retention_days" {
  description = "Raw package blobs retention in days after receipt (TALLYHOUSE_BLOB_RETENTION_DAYS); never below retention_days."
  type        = number
  default     = 2200
}

variable "ingest_image" {
  description = "Image repository of ingest."
  type        = string
  default     = "ghcr.io/tallyhouse/ingest"
}

variable "ingest_tag" {
  description = "Image tag of ingest (Pulumi.<env>.yaml; CI bumps dev's)."
  type        = string
  default     = "0.1.0"
}

variable "ingest_count" {
  description = "Ingest instances."
  type        = number
  default     = 2
}

variable "ingest_cpu" {
  description = "CPU of one ingest task, in MHz (signature verification is CPU bound)."
  type        = number
  default     = 1000
}

variable "ingest_memory" {
  description = "Memory of one ingest task, in MiB."
  type        = number
  default     = 512
}

variable "migrate_image" {
  description = "Image repository of the migrate prestart task (the ingest image)."
  type        = string
  default     = "ghcr.io/tallyhouse/ingest"
}

variable "migrate_tag" {
  description = "Image tag of the migrate prestart task (always ingest's: the schema and the server go together)."
  type        = string
  default     = "0.1.0"
}

variable "migrate_cpu" {
  description = "CPU of the migrate prestart task, in MHz."
  type        = number
  default     = 200
}

variable "migrate_memory" {
  description = "Memory of the migrate prestart task, in MiB."
  type        = number
  default     = 128
}

job "ingest" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "15s"
    healthy_deadline  = "5m"
    progress_deadline = "15m"
    auto_revert       = true
    stagger           = "30s"
  }

  group "ingest" {
    count = var.ingest_count

    spread {
      attribute = "${attr.platform.aws.placement.availability-zone}"
    }

    restart {
      attempts = 3
      interval = "5m"
      delay    = "15s"
      mode     = "delay"
    }

    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      max_delay      = "10m"
      unlimited      = true
    }

    network {
      port "metrics" {
        to = 9182
      }
    }

    service {
      name = "tallyhouse-ingest-metrics"
      port = "metrics"
      tags = ["metrics", "tallyhouse"]

      check {
        name     = "ingest health"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }

      check {
        name     = "ingest ready"
        type     = "http"
        path     = "/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # Schema, distribution, partitions ahead and grants, before the server.
    task "migrate" {
      driver = "docker"

      lifecycle {
        hook    = "prestart"
        sidecar = false
      }

      config {
        image           = "${var.migrate_image}:${var.migrate_tag}"
        args            = ["migrate"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-cluster-ingest-migrate"
        change_mode = "noop"
      }

      env {
        TALLYHOUSE_ENVIRONMENT           = var.environment
        TALLYHOUSE_SERVICE_ROLE          = "tallyhouse_ingest"
        TALLYHOUSE_READER_ROLE           = "tallyhouse_query"
        TALLYHOUSE_REQUIRE_CITUS         = var.require_citus
        TALLYHOUSE_PARTITIONS_AHEAD_DAYS = "14"
      }

      # The owner's login, only in this task's secrets directory.
      template {
        destination = "${NOMAD_SECRETS_DIR}/migrate.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
        {{ with secret "secret/data/tallyhouse-cluster/ingest-migrate/database_owner" }}TALLYHOUSE_ADMIN_DATABASE_URL=postgres://{{ .Data.data.username }}:{{ .Data.data.password | urlquery }}@{{ range service "citus-coordinator|any" }}{{ .Address }}:{{ .Port }}{{ end }}/tallyhouse_ingest{{ end }}
        EOT
      }

      resources {
        cpu    = var.migrate_cpu
        memory = var.migrate_memory
      }
    }

    task "ingest" {
      driver = "docker"

      # In-flight packages drain within 20 s (ServerOptions::drain_timeout).
      kill_signal  = "SIGINT"
      kill_timeout = "30s"

      config {
        image           = "${var.ingest_image}:${var.ingest_tag}"
        args            = ["serve"]
        ports           = ["metrics"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-ingest"
        change_mode = "restart"
      }

      env {
        VAULT_ADDR               = var.vault_addr
        TALLYHOUSE_ENVIRONMENT   = var.environment
        TALLYHOUSE_METRICS_ADDR  = "0.0.0.0:9182"
        TALLYHOUSE_AUDIENCE      = var.audience
        TALLYHOUSE_DATABASE_NAME = "tallyhouse_ingest"
        TALLYHOUSE_S3_BUCKET     = "tallyhouse-evidence"
        # Database logins leased from Vault's database secrets engine, each
        # a member of tallyhouse_ingest: every session switches to that stable
        # role (its grants, its objects). The KV `database` secret is not read.
        TALLYHOUSE_DATABASE_VAULT_ROLE  = "tallyhouse-ingest"
        TALLYHOUSE_DATABASE_VAULT_MOUNT = "database"
        TALLYHOUSE_DATABASE_GROUP_ROLE  = "tallyhouse_ingest"
        # Signature checks at once: the cores this task is given, not the host's.
        TALLYHOUSE_VERIFY_CONCURRENCY = "2"
        # The archive and cleanup jobs run in this service (docs/lifecycle.md):
        # partitions past the records retention go to the archive bucket (the
        # same MinIO and credentials), raw blobs are kept longer.
        TALLYHOUSE_ARCHIVE_BUCKET      = "tallyhouse-archive"
        TALLYHOUSE_RETENTION_DAYS      = var.retention_days
        TALLYHOUSE_BLOB_RETENTION_DAYS = var.blob_retention_days
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/discovery.env"
        env         = true
        change_mode = "restart"
        splay       = "1m"
        data        = <<-EOT
        TALLYHOUSE_AMQP_URIS={{ range $i, $s := service "rabbitmq-amqp|any" }}{{ if $i }},{{ end }}amqp://{{ $s.Address }}:{{ $s.Port }}/%2f{{ end }}
        {{ range service "citus-coordinator|any" }}TALLYHOUSE_DATABASE_HOST={{ .Address }}
        TALLYHOUSE_DATABASE_PORT={{ .Port }}
        {{ end }}{{ with service "minio-s3" }}{{ with index . 0 }}TALLYHOUSE_S3_ENDPOINT=http://{{ .Address }}:{{ .Port }}{{ end }}{{ end }}
        EOT
      }

      # A change of these restarts the task; not the receipt_key, which
      # `ingest serve` reads again every 30 s itself: the rotate-keys job
      # changes it (docs/lifecycle.md, "Key rotation").
      template {
        destination = "${NOMAD_SECRETS_DIR}/secret-versions"
        change_mode = "restart"
        splay       = "2m"
        data        = <<-EOT
        amqp={{ with secret "secret/data/tallyhouse/ingest/amqp" }}{{ .Data.metadata.version }}{{ end }}
        s3={{ with secret "secret/data/tallyhouse/ingest/s3" }}{{ .Data.metadata.version }}{{ end }}
        EOT
      }

      resources {
        cpu    = var.ingest_cpu
        memory = var.ingest_memory
      }
    }
  }
}
