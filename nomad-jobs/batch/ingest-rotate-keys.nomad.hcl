# `tallyhouse job run rotate-keys --wait` every hour: one step of the
# receipt and access-token signing keys' rotation (docs/lifecycle.md, "Key
# rotation"). The job runs inside the ingest service, which has the Vault
# client and RPC it needs (ingest rotates its receipt_key, then asks auth to
# rotate its jwt_key): this task only starts it over RPC and waits for its
# end, so it runs the CLI's image (the Dockerfile's `tallyhouse` target), as
# the canary does, not ingest's. Advisory lock, recorded in job_runs; each
# key is written with check-and-set, so a re-run after a crash redoes only
# what was not written. A key is due every key_rotation_days (ingest's
# TALLYHOUSE_KEY_ROTATION_DAYS); an hourly step publishes a due key, promotes
# a published one an hour or so after its time at most, and retires a
# replaced token key within an hour of its last token's expiry.
#
# The CLI reads the broker credentials from Vault itself
# (secret/data/tallyhouse/cli/amqp) as the task's workload identity, role
# tallyhouse-cli (the operator CLI's policy: that secret only).

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

variable "rotate_keys_image" {
  description = "Image repository of the task (the CLI's, the Dockerfile's `tallyhouse` target)."
  type        = string
  default     = "ghcr.io/tallyhouse/tallyhouse"
}

variable "rotate_keys_tag" {
  description = "Image tag of the task (the CLI of the ingest release it calls)."
  type        = string
  default     = "0.1.0"
}

variable "rotate_keys_count" {
  description = "Instances of the task per run (one)."
  type        = number
  default     = 1
}

variable "rotate_keys_cpu" {
  description = "CPU of the task, in MHz."
  type        = number
  default     = 100
}

variable "rotate_keys_memory" {
  description = "Memory of the task, in MiB."
  type        = number
  default     = 64
}

job "ingest-rotate-keys" {
  datacenters = var.datacenters
  type        = "batch"

  periodic {
    crons            = ["17 * * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "rotate_keys" {
    count = var.rotate_keys_count

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

    task "rotate_keys" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image           = "${var.rotate_keys_image}:${var.rotate_keys_tag}"
        args            = ["job", "run", "rotate-keys", "--wait", "--wait-secs", "600"]
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
        cpu    = var.rotate_keys_cpu
        memory = var.rotate_keys_memory
      }
    }
  }
}
