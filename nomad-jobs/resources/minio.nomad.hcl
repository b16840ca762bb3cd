# MinIO: the evidence store (bucket tallyhouse-evidence), distributed over
# four nodes with one drive each and erasure coded (EC:2 on a 4-drive set:
# any one node can be lost for reads and writes, two for reads). Usable
# capacity is half the raw; the data volumes are sized with about 40 %
# headroom over the expected evidence (pulumi/infrastructure sizing.py:
# expected / 0.6 usable), so healing after a drive loss and growth until the
# next expansion both fit.
#
# Each instance needs the `minio` host volume, which only the storage nodes
# have (pulumi/infrastructure nodes.py), and a resolvable name
# minio-<i>.<minio_domain> for the node it runs on (one per storage node).
# MinIO serves its own Prometheus endpoint (the exporter of this group),
# public inside the cluster, scraped by grafana-agent.
#
# Upgrades: MinIO expects every node on the same release. A tag change rolls
# one node at a time (update below), which MinIO tolerates for patch
# releases; for a major release, set max_parallel to the count for that
# deployment (docs/operations.md).
#
# The `setup` group (one instance) creates the bucket (versioned) and one
# user per service that reads `s3` in deployment/vault/secrets.json, with
# the least policy it needs, plus the read-only `backup` user of the
# evidence mirror; it re-runs whenever one of those secrets changes.

variable "datacenters" {
  description = "Nomad datacenters the job may run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "minio_domain" {
  description = "Domain under which minio-<i> resolves to the i-th storage node."
  type        = string
  default     = "tallyhouse.internal"
}

variable "minio_image" {
  description = "Image repository of MinIO."
  type        = string
  default     = "quay.io/minio/minio"
}

variable "minio_tag" {
  description = "Image tag of MinIO."
  type        = string
  default     = "RELEASE.2025-04-22T22-12-26Z"
}

variable "minio_count" {
  description = "MinIO nodes (one drive each; a multiple of 4 keeps the erasure set shape)."
  type        = number
  default     = 4
}

variable "minio_cpu" {
  description = "CPU of one MinIO task, in MHz."
  type        = number
  default     = 1000
}

variable "minio_memory" {
  description = "Memory of one MinIO task, in MiB."
  type        = number
  default     = 2048
}

variable "minio_setup_image" {
  description = "Image repository of the MinIO client (mc) of the setup task."
  type        = string
  default     = "quay.io/minio/mc"
}

variable "minio_setup_tag" {
  description = "Image tag of the MinIO client."
  type        = string
  default     = "RELEASE.2025-04-16T18-13-26Z"
}

variable "minio_setup_count" {
  description = "Instances of the setup task (one)."
  type        = number
  default     = 1
}

variable "minio_setup_cpu" {
  description = "CPU of the setup task, in MHz."
  type        = number
  default     = 100
}

variable "minio_setup_memory" {
  description = "Memory of the setup task, in MiB."
  type        = number
  default     = 64
}

job "minio" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "30s"
    healthy_deadline  = "5m"
    progress_deadline = "15m"
    auto_revert       = true
    stagger           = "1m"
  }

  group "minio" {
    count = var.minio_count

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    volume "data" {
      type      = "host"
      source    = "minio"
      read_only = false
    }

    restart {
      attempts = 5
      interval = "10m"
      delay    = "20s"
      mode     = "delay"
    }

    # The data lives on this node's volume: wait for the node to come back
    # rather than start empty elsewhere (the host volume pins it anyway).
    reschedule {
      delay          = "1m"
      delay_function = "exponential"
      max_delay      = "30m"
      unlimited      = true
    }

    network {
      mode = "host"
      port "s3" {
        static = 9000
      }
      port "console" {
        static = 9001
      }
    }

    service {
      name = "minio-s3"
      port = "s3"
      tags = ["minio"]

      check {
        name     = "minio live"
        type     = "http"
        path     = "/minio/health/live"
        interval = "10s"
        timeout  = "2s"
      }

      check {
        name     = "minio ready"
        type     = "http"
        path     = "/minio/health/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # The group's exporter: MinIO's own Prometheus endpoint.
    service {
      name = "minio-metrics"
      port = "s3"
      tags = ["metrics", "minio"]
      meta {
        metrics_path = "/minio/v2/metrics/node"
      }

      check {
        name     = "minio metrics"
        type     = "http"
        path     = "/minio/v2/metrics/node"
        interval = "30s"
        timeout  = "5s"
      }
    }

    task "minio" {
      driver = "docker"

      kill_timeout = "60s"

      config {
        image        = "${var.minio_image}:${var.minio_tag}"
        network_mode = "host"
        args         = ["server", "--address", ":9000", "--console-address", ":9001"]
      }

      volume_mount {
        volume      = "data"
        destination = "/data"
      }

      vault {
        role        = "tallyhouse-cluster-minio"
        change_mode = "noop"
      }

      env {
        MINIO_VOLUMES              = "http://minio-{0...${var.minio_count - 1}}.${var.minio_domain}:9000/data"
        MINIO_PROMETHEUS_AUTH_TYPE = "public"
        MINIO_STORAGE_CLASS_STANDARD = "EC:2"
      }

      # Root credentials: only in the secrets directory, as environment.
      # A change of them needs every node restarted together (MinIO checks
      # they agree), so it is not automatic (docs/operations.md).
      template {
        destination = "${NOMAD_SECRETS_DIR}/minio.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
        {{ with secret "secret/data/tallyhouse-cluster/minio/root" }}MINIO_ROOT_USER={{ .Data.data.username }}
        MINIO_ROOT_PASSWORD={{ .Data.data.password }}{{ end }}
        EOT
      }

      resources {
        cpu    = var.minio_cpu
        memory = var.minio_memory
      }
    }
  }

  group "setup" {
    count = var.minio_setup_count

    restart {
      attempts = 10
      interval = "10m"
      delay    = "20s"
      mode     = "delay"
    }

    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      max_delay      = "5m"
      unlimited      = true
    }

    # No port of its own: it exposes nothing, it only configures MinIO.
    task "minio_setup" {
      driver = "docker"

      config {
        image      = "${var.minio_setup_image}:${var.minio_setup_tag}"
        entrypoint = ["/bin/sh", "${NOMAD_TASK_DIR}/setup.sh"]
      }

      vault {
        role        = "tallyhouse-cluster-minio"
        change_mode = "restart"
      }

      # Credentials of the root and of every S3 user, as environment from
      # the secrets directory; the script passes the users' keys to `mc`.
      template {
        destination = "${NOMAD_SECRETS_DIR}/users.env"
        env         = true
        change_mode = "restart"
        splay       = "10s"
        data        = <<-EOT
        {{ with secret "secret/data/tallyhouse-cluster/minio/root" }}MINIO_ROOT_USER={{ .Data.data.username }}
        MINIO_ROOT_PASSWORD={{ .Data.data.password }}{{ end }}
        {{ with secret "secret/data/tallyhouse/ingest/s3" }}INGEST_ACCESS_KEY={{ .Data.data.access_key_id }}
        INGEST_SECRET_KEY={{ .Data.data.secret_access_key }}{{ end }}
        {{ with secret "secret/data/tallyhouse/query/s3" }}QUERY_ACCESS_KEY={{ .Data.data.access_key_id }}
        QUERY_SECRET_KEY={{ .Data.data.secret_access_key }}{{ end }}
        {{ with secret "secret/data/tallyhouse-cluster/minio/backup" }}BACKUP_ACCESS_KEY={{ .Data.data.access_key_id }}
        BACKUP_SECRET_KEY={{ .Data.data.secret_access_key }}{{ end }}
        {{ with service "minio-s3" }}{{ with index . 0 }}MINIO_URL=http://{{ .Address }}:{{ .Port }}{{ end }}{{ end }}
        EOT
      }

      template {
        destination = "${NOMAD_TASK_DIR}/evidence-write.json"
        change_mode = "noop"
        data        = <<-EOT
        {"Version": "2012-10-17", "Statement": [
          {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": ["arn:aws:s3:::tallyhouse-evidence/*"]},
          {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": ["arn:aws:s3:::tallyhouse-evidence"]}
        ]}
        EOT
      }

      template {
        destination = "${NOMAD_TASK_DIR}/evidence-read.json"
        change_mode = "noop"
        data        = <<-EOT
        {"Version": "2012-10-17", "Statement": [
          {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::tallyhouse-evidence/*"]},
          {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": ["arn:aws:s3:::tallyhouse-evidence"]}
        ]}
        EOT
      }

      # Idempotent: every step may run again. It stays up afterwards so that
      # a changed secret restarts it (change_mode) and re-applies the users.
      # (Shell variables are written $NAME: "$${" would be HCL.)
      template {
        destination = "${NOMAD_TASK_DIR}/setup.sh"
        change_mode = "noop"
        perms       = "0755"
        data        = <<-EOT
        set -eu
        # mc reads the alias from the environment, not from its argv.
        hostport=$(echo "$MINIO_URL" | sed 's|^http://||')
        export MC_HOST_local="http://$MINIO_ROOT_USER:$MINIO_ROOT_PASSWORD@$hostport"
        until mc ready local; do echo "waiting for MinIO"; sleep 5; done
        mc mb --ignore-existing local/tallyhouse-evidence
        mc version enable local/tallyhouse-evidence
        mc admin policy create local tallyhouse-evidence-write "$NOMAD_TASK_DIR/evidence-write.json"
        mc admin policy create local tallyhouse-evidence-read "$NOMAD_TASK_DIR/evidence-read.json"
        user() {
          mc admin user add local "$1" "$2"
          mc admin policy attach local "$3" --user "$1" || true
        }
        user "$INGEST_ACCESS_KEY" "$INGEST_SECRET_KEY" tallyhouse-evidence-write
        user "$QUERY_ACCESS_KEY" "$QUERY_SECRET_KEY" tallyhouse-evidence-read
        user "$BACKUP_ACCESS_KEY" "$BACKUP_SECRET_KEY" tallyhouse-evidence-read
        echo "MinIO set up: bucket tallyhouse-evidence, users of ingest, query and backup"
        exec sleep 2147483647
        EOT
      }

      resources {
        cpu    = var.minio_setup_cpu
        memory = var.minio_setup_memory
      }
    }
  }
}
