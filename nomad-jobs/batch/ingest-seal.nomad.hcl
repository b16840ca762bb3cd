# `ingest job seal` daily: seals each daily partition that left the write
# window (its day ended more than TALLYHOUSE_RECORD_MAX_AGE_DAYS ago, the
# same setting as ingest's): row count and SHA-256 digest of its rows in
# canonical order (docs/lifecycle.md), at most
# TALLYHOUSE_SEAL_MAX_PARTITIONS per run. Advisory lock, recorded in
# job_runs; a re-run keeps the seals already taken.

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

variable "record_max_age_days" {
  description = "Ingest's record age limit in days (as the ingest job's); decides when a partition is sealed."
  type        = number
  default     = 400
}

variable "seal_max_partitions" {
  description = "Most partitions sealed per run."
  type        = number
  default     = 7
}

variable "seal_image" {
  description = "Image repository of the task (the ingest image)."
  type        = string
  default     = "ghcr.io/tallyhouse/ingest"
}

variable "seal_tag" {
  description = "Image tag of the task (always ingest's)."
  type        = string
  default     = "0.1.0"
}

variable "seal_count" {
  description = "Instances of the task per run (one)."
  type        = number
  default     = 1
}

variable "seal_cpu" {
  description = "CPU of the task, in MHz."
  type        = number
  default     = 500
}

variable "seal_memory" {
  description = "Memory of the task, in MiB."
  type        = number
  default     = 256
}

job "ingest-seal" {
  datacenters = var.datacenters
  type        = "batch"

  periodic {
    crons            = ["47 3 * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "seal" {
    count = var.seal_count

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

    task "seal" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image           = "${var.seal_image}:${var.seal_tag}"
        args            = ["job", "seal"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-cluster-ingest-migrate"
        change_mode = "noop"
      }

      env {
        TALLYHOUSE_ENVIRONMENT         = var.environment
        TALLYHOUSE_RECORD_MAX_AGE_DAYS = var.record_max_age_days
        TALLYHOUSE_SEAL_MAX_PARTITIONS = var.seal_max_partitions
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
        cpu    = var.seal_cpu
        memory = var.seal_memory
      }
    }
  }
}
