# The end-to-end canary: `tallyhouse canary` from the CLI's image. Every
# interval it signs and submits a package as the canary submitter through the
# public API (https://<public_host>, the way submitters reach it: the load
# balancer, then Fabio), verifies the receipt, logs in as the canary
# back-office user, reads the package and its series back and logs out; it
# publishes the outcome and each step's latency on its metrics port
# (tallyhouse_canary_*, scraped like the services', alerts in
# grafana/alerts/tallyhouse.rules.yaml).
#
# It reads its credentials (submitter id, signing key, username, password)
# from Vault itself every round, as the task's workload identity (role
# tallyhouse-canary: secret/data/tallyhouse/canary/* only), so a rotated
# secret is picked up without a restart. The submitter, its key and the user
# must be registered once (docs/lifecycle.md, "Canary").
#
# Registered by pulumi/application (variables from Pulumi.<env>.yaml), or by
# hand: nomad job run -var canary_tag=<tag> nomad-jobs/services/canary.nomad.hcl

variable "datacenters" {
  description = "Nomad datacenters the job may run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "environment" {
  description = "Deployment name (dev, prod...): TALLYHOUSE_ENVIRONMENT, a log field."
  type        = string
  default     = "dev"
}

variable "vault_addr" {
  description = "Vault address as seen from the tasks (VAULT_ADDR)."
  type        = string
  default     = "https://vault.service.consul:8200"
}

variable "public_host" {
  description = "Host name of the public API: the canary goes through https://<public_host>, as submitters do."
  type        = string
  default     = "api.tallyhouse.example"
}

variable "audience" {
  description = "This deployment's name in signed packages (TALLYHOUSE_CANARY_AUDIENCE): ingest's TALLYHOUSE_AUDIENCE."
  type        = string
  default     = "tallyhouse-dev"
}

variable "canary_interval" {
  description = "Time between the starts of two canary rounds (TALLYHOUSE_CANARY_INTERVAL: seconds, or 30s, 5m, 1h)."
  type        = string
  default     = "60s"
}

variable "canary_image" {
  description = "Image repository of the CLI (the Dockerfile's `tallyhouse` target), which runs the canary."
  type        = string
  default     = "ghcr.io/tallyhouse/tallyhouse"
}

variable "canary_tag" {
  description = "Image tag of the CLI (Pulumi.<env>.yaml; CI bumps dev's)."
  type        = string
  default     = "0.1.0"
}

variable "canary_count" {
  description = "Canary instances: one (every instance submits as the same canary submitter)."
  type        = number
  default     = 1
}

variable "canary_cpu" {
  description = "CPU of the canary task, in MHz."
  type        = number
  default     = 100
}

variable "canary_memory" {
  description = "Memory of the canary task, in MiB."
  type        = number
  default     = 64
}

job "canary" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "15s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "canary" {
    count = var.canary_count

    restart {
      attempts = 3
      interval = "5m"
      delay    = "15s"
      mode     = "delay"
    }

    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      max_delay      = "10m"
      unlimited      = true
    }

    network {
      port "metrics" {
        to = 9185
      }
    }

    # Scraped like the services (tag metrics): job tallyhouse-canary-metrics.
    # Only /health is checked: a failing platform fails the canary's rounds
    # (its metrics and alerts say so), not the canary's own deployment.
    service {
      name = "tallyhouse-canary-metrics"
      port = "metrics"
      tags = ["metrics", "tallyhouse"]

      check {
        name     = "canary health"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "canary" {
      driver = "docker"

      # A round in flight is abandoned on SIGINT; the process exits at once.
      kill_signal  = "SIGINT"
      kill_timeout = "10s"

      config {
        image           = "${var.canary_image}:${var.canary_tag}"
        args            = ["canary"]
        ports           = ["metrics"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-canary"
        change_mode = "restart"
      }

      env {
        VAULT_ADDR                     = var.vault_addr
        TALLYHOUSE_ENVIRONMENT         = var.environment
        TALLYHOUSE_GATEWAY_URL         = "https://${var.public_host}"
        TALLYHOUSE_CANARY_AUDIENCE     = var.audience
        TALLYHOUSE_CANARY_INTERVAL     = var.canary_interval
        TALLYHOUSE_CANARY_METRICS_ADDR = "0.0.0.0:9185"
      }

      resources {
        cpu    = var.canary_cpu
        memory = var.canary_memory
      }
    }
  }
}
