# The gateway: the only HTTP entry of Tallyhouse (docs/architecture.md).
# Fabio routes the public API to it (the `urlprefix-` tag below, the only one
# in nomad-jobs/); its ops endpoints (/metrics, /health, /ready) are on a port
# of their own. It reads its broker credentials from Vault itself (VAULT_TOKEN
# comes from the `vault` block); the templates render only what Consul and
# Vault know into the task's secrets directory.
#
# Registered by pulumi/application (variables from Pulumi.<env>.yaml), or by
# hand: nomad job run -var gateway_tag=<tag> nomad-jobs/services/gateway.nomad.hcl

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

variable "vault_addr" {
  description = "Vault address as seen from the tasks (VAULT_ADDR)."
  type        = string
  default     = "https://vault.service.consul:8200"
}

variable "public_host" {
  description = "Host name of the public API, routed by Fabio to the gateway."
  type        = string
  default     = "api.tallyhouse.example"
}

variable "gateway_image" {
  description = "Image repository of the gateway."
  type        = string
  default     = "ghcr.io/tallyhouse/gateway"
}

variable "gateway_tag" {
  description = "Image tag of the gateway (Pulumi.<env>.yaml; CI bumps dev's)."
  type        = string
  default     = "0.1.0"
}

variable "gateway_count" {
  description = "Gateway instances."
  type        = number
  default     = 2
}

variable "gateway_cpu" {
  description = "CPU of one gateway task, in MHz."
  type        = number
  default     = 500
}

variable "gateway_memory" {
  description = "Memory of one gateway task, in MiB."
  type        = number
  default     = 256
}

job "gateway" {
  datacenters = var.datacenters
  type        = "service"

  # One instance at a time, promoted only when its Consul checks pass
  # (/health and /ready); a deployment that does not get healthy rolls back.
  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "15s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
    stagger           = "30s"
  }

  group "gateway" {
    count = var.gateway_count

    spread {
      attribute = "${attr.platform.aws.placement.availability-zone}"
    }

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
      port "http" {
        to = 8080
      }
      port "metrics" {
        to = 9180
      }
    }

    # The public API. Fabio sends traffic only to instances whose checks
    # pass: alive on the HTTP port, ready (a broker link up) on the ops port.
    service {
      name = "tallyhouse-gateway"
      port = "http"
      tags = ["urlprefix-${var.public_host}/"]

      check {
        name     = "gateway http health"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }

      check {
        name     = "gateway ready"
        type     = "http"
        port     = "metrics"
        path     = "/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # The ops endpoint, scraped by grafana-agent (tag `metrics`).
    service {
      name = "tallyhouse-gateway-metrics"
      port = "metrics"
      tags = ["metrics", "tallyhouse"]

      check {
        name     = "gateway health"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }

      check {
        name     = "gateway ready"
        type     = "http"
        path     = "/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "gateway" {
      driver = "docker"

      # Nomad sends SIGINT; the gateway stops accepting and finishes
      # in-flight requests, whose RPC calls drain within 20 s
      # (ServerOptions::drain_timeout): give it more than that.
      kill_signal  = "SIGINT"
      kill_timeout = "30s"

      config {
        image           = "${var.gateway_image}:${var.gateway_tag}"
        ports           = ["http", "metrics"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-gateway"
        change_mode = "restart"
      }

      env {
        VAULT_ADDR                    = var.vault_addr
        TALLYHOUSE_ENVIRONMENT        = var.environment
        TALLYHOUSE_HTTP_ADDR          = "0.0.0.0:8080"
        TALLYHOUSE_METRICS_ADDR       = "0.0.0.0:9180"
        TALLYHOUSE_CLIENT_ADDR_HEADER = "x-forwarded-for"
      }

      # Every RabbitMQ node, healthy or not (|any): the client keeps a link
      # to each and skips the ones that are down, so only a node moving to
      # another address re-renders this file (and restarts the task).
      template {
        destination = "${NOMAD_SECRETS_DIR}/discovery.env"
        env         = true
        change_mode = "restart"
        splay       = "1m"
        data        = <<-EOT
        TALLYHOUSE_AMQP_URIS={{ range $i, $s := service "rabbitmq-amqp|any" }}{{ if $i }},{{ end }}amqp://{{ $s.Address }}:{{ $s.Port }}/%2f{{ end }}
        EOT
      }

      # The service reads its secrets at start-up: when one is rotated in
      # Vault its version changes here and the task restarts to read it.
      template {
        destination = "${NOMAD_SECRETS_DIR}/secret-versions"
        change_mode = "restart"
        splay       = "2m"
        data        = <<-EOT
        amqp={{ with secret "secret/data/tallyhouse/gateway/amqp" }}{{ .Data.metadata.version }}{{ end }}
        EOT
      }

      resources {
        cpu    = var.gateway_cpu
        memory = var.gateway_memory
      }
    }
  }
}
