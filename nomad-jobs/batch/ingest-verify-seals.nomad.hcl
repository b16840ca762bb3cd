# `ingest job verify-seals` daily: recomputes the digests of the
# TALLYHOUSE_SEAL_VERIFY_MAX_PARTITIONS least recently checked seals and
# records each check; a mismatch is logged (alert = "seal_mismatch") and
# shows in ingest's tallyhouse_lifecycle_seal_mismatched_partitions, which
# TallyhouseSealMismatch alerts on (grafana/alerts/). Advisory lock,
# recorded in job_runs.

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

variable "seal_verify_max_partitions" {
  description = "Seals re-checked per run (the least recently checked first)."
  type        = number
  default     = 7
}

variable "verify_seals_image" {
  description = "Image repository of the task (the ingest image)."
  type        = string
  default     = "ghcr.io/tallyhouse/ingest"
}

variable "verify_seals_tag" {
  description = "Image tag of the task (always ingest's)."
  type        = string
  default     = "0.1.0"
}

variable "verify_seals_count" {
  description = "Instances of the task per run (one)."
  type        = number
  default     = 1
}

variable "verify_seals_cpu" {
  description = "CPU of the task, in MHz."
  type        = number
  default     = 500
}

variable "verify_seals_memory" {
  description = "Memory of the task, in MiB."
  type        = number
  default     = 256
}

job "ingest-verify-seals" {
  datacenters = var.datacenters
  type        = "batch"

  periodic {
    crons            = ["17 5 * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "verify_seals" {
    count = var.verify_seals_count

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

    task "verify_seals" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image           = "${var.verify_seals_image}:${var.verify_seals_tag}"
        args            = ["job", "verify-seals"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-cluster-ingest-migrate"
        change_mode = "noop"
      }

      env {
        TALLYHOUSE_ENVIRONMENT                = var.environment
        TALLYHOUSE_SEAL_VERIFY_MAX_PARTITIONS = var.seal_verify_max_partitions
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/job.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
        {{ with secret "secret/data/tallyhouse-cluster/ingest-migrate/database_owner" }}TALLYHOUSE_ADMIN_DATABASE_URL=postgres://{{ .Data.data.username }}:{{ .Data.data.password | urlquery }}@{{ range service "citus-coordinator|any" }}{{ .Address }}:{{ .Port }}{{ end }}/tallyhouse_ingest{{ end }}
        EOT
      }

      resources {
        cpu    = var.verify_seals_cpu
        memory = var.verify_seals_memory
      }
    }
  }
}
