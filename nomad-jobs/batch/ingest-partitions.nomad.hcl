# Daily `ingest migrate`: keeps the records' daily partitions prepared
# ahead (TALLYHOUSE_PARTITIONS_AHEAD_DAYS) and the schema and grants as the
# running ingest expects them. Idempotent; it takes the migration lock, so
# it is safe beside an ingest deployment's own prestart migrate.
#
# The data lifecycle jobs (docs/lifecycle.md) are their own periodic jobs
# beside this one: ingest-partitions-ahead (the same partition function as
# a recorded, locked job), ingest-columnar, ingest-seal, ingest-verify-seals
# and ingest-rollup; archive, retention and cleanup come later.

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

variable "require_citus" {
  description = "Fail unless the citus extension exists in the ingest database (TALLYHOUSE_REQUIRE_CITUS)."
  type        = bool
  default     = true
}

variable "partitions_ahead_days" {
  description = "Days of partitions kept prepared ahead of today."
  type        = number
  default     = 30
}

variable "partitions_image" {
  description = "Image repository of the task (the ingest image)."
  type        = string
  default     = "ghcr.io/tallyhouse/ingest"
}

variable "partitions_tag" {
  description = "Image tag of the task (always ingest's)."
  type        = string
  default     = "0.1.0"
}

variable "partitions_count" {
  description = "Instances of the task per run (one)."
  type        = number
  default     = 1
}

variable "partitions_cpu" {
  description = "CPU of the task, in MHz."
  type        = number
  default     = 200
}

variable "partitions_memory" {
  description = "Memory of the task, in MiB."
  type        = number
  default     = 128
}

job "ingest-partitions" {
  datacenters = var.datacenters
  type        = "batch"

  periodic {
    crons            = ["17 2 * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "partitions" {
    count = var.partitions_count

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

    task "partitions" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image           = "${var.partitions_image}:${var.partitions_tag}"
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
        TALLYHOUSE_PARTITIONS_AHEAD_DAYS = var.partitions_ahead_days
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/migrate.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
        {{ with secret "secret/data/tallyhouse-cluster/ingest-migrate/database_owner" }}TALLYHOUSE_ADMIN_DATABASE_URL=postgres://{{ .Data.data.username }}:{{ .Data.data.password | urlquery }}@{{ range service "citus-coordinator|any" }}{{ .Address }}:{{ .Port }}{{ end }}/tallyhouse_ingest{{ end }}
        EOT
      }

      resources {
        cpu    = var.partitions_cpu
        memory = var.partitions_memory
      }
    }
  }
}
