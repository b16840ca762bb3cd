# `tallyhouse job run archive --wait` daily: exports each `records`
# partition whose day ended more than TALLYHOUSE_RETENTION_DAYS ago (ingest's
# setting) to the archive bucket as gzip-compressed CSV with a schema and a
# manifest, reads the export back and checks it against the partition's seal,
# records it in partition_archives, and only then detaches and drops the
# partition (docs/lifecycle.md, "Archive, retention, restore"). At most
# TALLYHOUSE_ARCHIVE_MAX_PARTITIONS per run; it also drops partitions
# restored longer than TALLYHOUSE_RESTORE_KEEP_DAYS ago. The job runs inside
# the ingest service, which has the buckets it needs: this task only starts
# it over RPC and waits (the CLI's image, as for ingest-rotate-keys). Every
# step is safe to redo: a crash between the archive and the drop is finished
# by the next run; a partition is never dropped without a verified archive.
# Restores are on demand: `tallyhouse archive restore records_pYYYYMMDD`.
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

variable "archive_image" {
  description = "Image repository of the task (the CLI's, the Dockerfile's `tallyhouse` target)."
  type        = string
  default     = "ghcr.io/tallyhouse/tallyhouse"
}

variable "archive_tag" {
  description = "Image tag of the task (the CLI of the ingest release it calls)."
  type        = string
  default     = "0.1.0"
}

variable "archive_count" {
  description = "Instances of the task per run (one)."
  type        = number
  default     = 1
}

variable "archive_cpu" {
  description = "CPU of the task, in MHz."
  type        = number
  default     = 100
}

variable "archive_memory" {
  description = "Memory of the task, in MiB."
  type        = number
  default     = 64
}

job "ingest-archive" {
  datacenters = var.datacenters
  type        = "batch"

  periodic {
    crons            = ["23 4 * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "archive" {
    count = var.archive_count

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

    task "archive" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image           = "${var.archive_image}:${var.archive_tag}"
        args            = ["job", "run", "archive", "--wait", "--wait-secs", "21600"]
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
        cpu    = var.archive_cpu
        memory = var.archive_memory
      }
    }
  }
}
