# `ingest job partitions-ahead` every 6 hours: creates the records' daily
# partitions up to TALLYHOUSE_PARTITIONS_AHEAD_DAYS ahead, so ingest never
# meets a missing partition (docs/lifecycle.md). The same function as the
# daily `ingest migrate` of ingest-partitions, but as a lifecycle job: it
# takes its advisory lock (a second instance exits 0 at once), is recorded
# in job_runs, and ingest exports its last success as a metric.

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

variable "partitions_ahead_days" {
  description = "Days of partitions kept prepared ahead of today."
  type        = number
  default     = 30
}

variable "partitions_ahead_image" {
  description = "Image repository of the task (the ingest image)."
  type        = string
  default     = "ghcr.io/tallyhouse/ingest"
}

variable "partitions_ahead_tag" {
  description = "Image tag of the task (always ingest's)."
  type        = string
  default     = "0.1.0"
}

variable "partitions_ahead_count" {
  description = "Instances of the task per run (one)."
  type        = number
  default     = 1
}

variable "partitions_ahead_cpu" {
  description = "CPU of the task, in MHz."
  type        = number
  default     = 200
}

variable "partitions_ahead_memory" {
  description = "Memory of the task, in MiB."
  type        = number
  default     = 128
}

job "ingest-partitions-ahead" {
  datacenters = var.datacenters
  type        = "batch"

  periodic {
    crons            = ["7 */6 * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "partitions_ahead" {
    count = var.partitions_ahead_count

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

    task "partitions_ahead" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image           = "${var.partitions_ahead_image}:${var.partitions_ahead_tag}"
        args            = ["job", "partitions-ahead"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-cluster-ingest-migrate"
        change_mode = "noop"
      }

      env {
        TALLYHOUSE_ENVIRONMENT           = var.environment
        TALLYHOUSE_PARTITIONS_AHEAD_DAYS = var.partitions_ahead_days
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
        cpu    = var.partitions_ahead_cpu
        memory = var.partitions_ahead_memory
      }
    }
  }
}
