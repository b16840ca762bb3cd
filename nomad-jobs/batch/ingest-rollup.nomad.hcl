# `ingest job rollup` every 15 minutes: recomputes the hourly and daily
# rollups of the closed hours that received records since the last run
# (late records included), which the query service reads for buckets of an
# hour or more (docs/lifecycle.md). Advisory lock, recorded in job_runs;
# each batch of hours is one transaction, so a re-run after a crash redoes
# only what was not committed.

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

variable "rollup_batch_hours" {
  description = "Hours of records recomputed per transaction."
  type        = number
  default     = 24
}

variable "rollup_image" {
  description = "Image repository of the task (the ingest image)."
  type        = string
  default     = "ghcr.io/tallyhouse/ingest"
}

variable "rollup_tag" {
  description = "Image tag of the task (always ingest's)."
  type        = string
  default     = "0.1.0"
}

variable "rollup_count" {
  description = "Instances of the task per run (one)."
  type        = number
  default     = 1
}

variable "rollup_cpu" {
  description = "CPU of the task, in MHz."
  type        = number
  default     = 500
}

variable "rollup_memory" {
  description = "Memory of the task, in MiB."
  type        = number
  default     = 256
}

job "ingest-rollup" {
  datacenters = var.datacenters
  type        = "batch"

  periodic {
    crons            = ["*/15 * * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "rollup" {
    count = var.rollup_count

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

    task "rollup" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image           = "${var.rollup_image}:${var.rollup_tag}"
        args            = ["job", "rollup"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-cluster-ingest-migrate"
        change_mode = "noop"
      }

      env {
        TALLYHOUSE_ENVIRONMENT        = var.environment
        TALLYHOUSE_ROLLUP_BATCH_HOURS = var.rollup_batch_hours
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
        cpu    = var.rollup_cpu
        memory = var.rollup_memory
      }
    }
  }
}
