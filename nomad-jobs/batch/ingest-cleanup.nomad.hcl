# `tallyhouse job run cleanup --wait` daily: asks auth to forget stale
# login-throttle state and revocations of expired tokens, forgets job runs
# and seal checks older than TALLYHOUSE_JOB_HISTORY_DAYS, deletes package
# blobs past TALLYHOUSE_BLOB_RETENTION_DAYS (recording each in blob_expiries;
# the package rows stay) and orphan blobs older than
# TALLYHOUSE_ORPHAN_GRACE_HOURS (docs/lifecycle.md, "Cleanup"). Never an
# audit entry, never a package row, never a blob a package inside its
# retention references. Runs inside the ingest service (evidence bucket, RPC
# to auth): this task only starts it over RPC and waits (the CLI's image).
#
# The CLI reads the broker credentials from Vault itself
# (secret/data/tallyhouse/cli/amqp) as the task's workload identity, role
# tallyhouse-cli.

variable "datacenters" {
  description = "Nomad datacenters the job may run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "vault_addr" {
  description = "Vault address as seen from the tasks (VAULT_ADDR)."
  type        = string
  default     = "https://vault.service.consul:8200"
}

variable "cleanup_image" {
  description = "Image repository of the task (the CLI's, the Dockerfile's `tallyhouse` target)."
  type        = string
  default     = "ghcr.io/tallyhouse/tallyhouse"
}

variable "cleanup_tag" {
  description = "Image tag of the task (the CLI of the ingest release it calls)."
  type        = string
  default     = "0.1.0"
}

variable "cleanup_count" {
  description = "Instances of the task per run (one)."
  type        = number
  default     = 1
}

variable "cleanup_cpu" {
  description = "CPU of the task, in MHz."
  type        = number
  default     = 100
}

variable "cleanup_memory" {
  description = "Memory of the task, in MiB."
  type        = number
  default     = 64
}

job "ingest-cleanup" {
  datacenters = var.datacenters
  type        = "batch"

  periodic {
    crons            = ["53 5 * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "cleanup" {
    count = var.cleanup_count

    restart {
      attempts = 3
      interval = "30m"
      delay    = "1m"
      mode     = "fail"
    }

    reschedule {
      attempts       = 3
      interval       = "6h"
      delay          = "5m"
      delay_function = "exponential"
      max_delay      = "1h"
      unlimited      = false
    }

    task "cleanup" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image           = "${var.cleanup_image}:${var.cleanup_tag}"
        args            = ["job", "run", "cleanup", "--wait", "--wait-secs", "7200"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-cli"
        change_mode = "noop"
      }

      env {
        VAULT_ADDR = var.vault_addr
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/discovery.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
        TALLYHOUSE_AMQP_URIS={{ range $i, $s := service "rabbitmq-amqp|any" }}{{ if $i }},{{ end }}amqp://{{ $s.Address }}:{{ $s.Port }}/%2f{{ end }}
        EOT
      }

      resources {
        cpu    = var.cleanup_cpu
        memory = var.cleanup_memory
      }
    }
  }
}
