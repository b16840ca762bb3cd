# The auth service: back-office users, Argon2id logins, access tokens and
# the audit trail in its own PostgreSQL database (tallyhouse_auth on the
# Citus coordinator, plain tables), served over RPC; it migrates at start-up.
# It reads its broker credentials and its token signing key from Vault
# itself and leases its database logins from Vault's database secrets engine
# (role tallyhouse-auth); the templates render only where the brokers and
# the database are, and the versions of its KV secrets (a change restarts
# it), but for its token signing key, which it reads again every 30 s
# itself: the rotate-keys job changes it (docs/lifecycle.md, "Key rotation").

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

variable "auth_image" {
  description = "Image repository of the auth service."
  type        = string
  default     = "ghcr.io/tallyhouse/auth"
}

variable "auth_tag" {
  description = "Image tag of the auth service (Pulumi.<env>.yaml; CI bumps dev's)."
  type        = string
  default     = "0.1.0"
}

variable "auth_count" {
  description = "Auth service instances."
  type        = number
  default     = 2
}

variable "auth_cpu" {
  description = "CPU of one auth task, in MHz."
  type        = number
  default     = 500
}

variable "auth_memory" {
  description = "Memory of one auth task, in MiB."
  type        = number
  default     = 384
}

job "auth" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "15s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
    stagger           = "30s"
  }

  group "auth" {
    count = var.auth_count

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
      port "metrics" {
        to = 9184
      }
    }

    service {
      name = "tallyhouse-auth-metrics"
      port = "metrics"
      tags = ["metrics", "tallyhouse"]

      check {
        name     = "auth health"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }

      check {
        name     = "auth ready"
        type     = "http"
        path     = "/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "auth" {
      driver = "docker"

      # In-flight calls (a login holds an Argon2id slot for tens of ms)
      # drain within 20 s (ServerOptions::drain_timeout).
      kill_signal  = "SIGINT"
      kill_timeout = "30s"

      config {
        image           = "${var.auth_image}:${var.auth_tag}"
        ports           = ["metrics"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-auth"
        change_mode = "restart"
      }

      env {
        VAULT_ADDR               = var.vault_addr
        TALLYHOUSE_ENVIRONMENT   = var.environment
        TALLYHOUSE_METRICS_ADDR  = "0.0.0.0:9184"
        TALLYHOUSE_DATABASE_NAME = "tallyhouse_auth"
        # Database logins leased from Vault's database secrets engine, each
        # a member of tallyhouse_auth: every session switches to that stable
        # role (its grants, its objects). The KV `database` secret is not read.
        TALLYHOUSE_DATABASE_VAULT_ROLE  = "tallyhouse-auth"
        TALLYHOUSE_DATABASE_VAULT_MOUNT = "database"
        TALLYHOUSE_DATABASE_GROUP_ROLE  = "tallyhouse_auth"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/discovery.env"
        env         = true
        change_mode = "restart"
        splay       = "1m"
        data        = <<-EOT
        TALLYHOUSE_AMQP_URIS={{ range $i, $s := service "rabbitmq-amqp|any" }}{{ if $i }},{{ end }}amqp://{{ $s.Address }}:{{ $s.Port }}/%2f{{ end }}
        {{ range service "citus-coordinator|any" }}TALLYHOUSE_DATABASE_HOST={{ .Address }}
        TALLYHOUSE_DATABASE_PORT={{ .Port }}
        {{ end }}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/secret-versions"
        change_mode = "restart"
        splay       = "2m"
        data        = <<-EOT
        amqp={{ with secret "secret/data/tallyhouse/auth/amqp" }}{{ .Data.metadata.version }}{{ end }}
        EOT
      }

      resources {
        cpu    = var.auth_cpu
        memory = var.auth_memory
      }
    }
  }
}
