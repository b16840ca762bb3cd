# `ingest job columnar` daily: with Citus and citus_columnar, converts the
# daily partitions older than TALLYHOUSE_COLUMNAR_AFTER_DAYS to columnar
# storage and records each one's compression ratio (a metric of ingest);
# without them it logs that columnar is unavailable and changes nothing
# (docs/lifecycle.md). Advisory lock, recorded in job_runs; safe to re-run.

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

variable "columnar_after_days" {
  description = "Days after its day ends before a partition is converted to columnar."
  type        = number
  default     = 30
}

variable "columnar_image" {
  description = "Image repository of the task (the ingest image)."
  type        = string
  default     = "ghcr.io/tallyhouse/ingest"
}

variable "columnar_tag" {
  description = "Image tag of the task (always ingest's)."
  type        = string
  default     = "0.1.0"
}

variable "columnar_count" {
  description = "Instances of the task per run (one)."
  type        = number
  default     = 1
}

variable "columnar_cpu" {
  description = "CPU of the task, in MHz."
  type        = number
  default     = 500
}

variable "columnar_memory" {
  description = "Memory of the task, in MiB."
  type        = number
  default     = 256
}

job "ingest-columnar" {
  datacenters = var.datacenters
  type        = "batch"

  periodic {
    crons            = ["37 3 * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "columnar" {
    count = var.columnar_count

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

    task "columnar" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image           = "${var.columnar_image}:${var.columnar_tag}"
        args            = ["job", "columnar"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-cluster-ingest-migrate"
        change_mode = "noop"
      }

      env {
        TALLYHOUSE_ENVIRONMENT         = var.environment
        TALLYHOUSE_COLUMNAR_AFTER_DAYS = var.columnar_after_days
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
        cpu    = var.columnar_cpu
        memory = var.columnar_memory
      }
    }
  }
}
