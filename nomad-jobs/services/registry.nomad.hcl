# The registry: submitters and their public keys in its own PostgreSQL
# database (tallyhouse_registry on the Citus coordinator, plain tables), served
# over RPC. It runs its migrations at start-up. It reads its broker
# credentials from Vault itself and leases its database logins from Vault's
# database secrets engine (role tallyhouse-registry), renewing or replacing
# them before they expire; the templates render only where the brokers and
# the database are, and the versions of its KV secrets.

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

variable "registry_image" {
  description = "Image repository of the registry."
  type        = string
  default     = "ghcr.io/tallyhouse/registry"
}

variable "registry_tag" {
  description = "Image tag of the registry (Pulumi.<env>.yaml; CI bumps dev's)."
  type        = string
  default     = "0.1.0"
}

variable "registry_count" {
  description = "Registry instances."
  type        = number
  default     = 2
}

variable "registry_cpu" {
  description = "CPU of one registry task, in MHz."
  type        = number
  default     = 250
}

variable "registry_memory" {
  description = "Memory of one registry task, in MiB."
  type        = number
  default     = 192
}

job "registry" {
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

  group "registry" {
    count = var.registry_count

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
        to = 9181
      }
    }

    service {
      name = "tallyhouse-registry-metrics"
      port = "metrics"
      tags = ["metrics", "tallyhouse"]

      check {
        name     = "registry health"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }

      check {
        name     = "registry ready"
        type     = "http"
        path     = "/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "registry" {
      driver = "docker"

      # In-flight calls drain within 20 s (ServerOptions::drain_timeout).
      kill_signal  = "SIGINT"
      kill_timeout = "30s"

      config {
        image           = "${var.registry_image}:${var.registry_tag}"
        ports           = ["metrics"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-registry"
        change_mode = "restart"
      }

      env {
        VAULT_ADDR               = var.vault_addr
        TALLYHOUSE_ENVIRONMENT   = var.environment
        TALLYHOUSE_METRICS_ADDR  = "0.0.0.0:9181"
        TALLYHOUSE_DATABASE_NAME = "tallyhouse_registry"
        # Database logins leased from Vault's database secrets engine, each
        # a member of tallyhouse_registry: every session switches to that stable
        # role (its grants, its objects). The KV `database` secret is not read.
        TALLYHOUSE_DATABASE_VAULT_ROLE  = "tallyhouse-registry"
        TALLYHOUSE_DATABASE_VAULT_MOUNT = "database"
        TALLYHOUSE_DATABASE_GROUP_ROLE  = "tallyhouse_registry"
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
        amqp={{ with secret "secret/data/tallyhouse/registry/amqp" }}{{ .Data.metadata.version }}{{ end }}
        EOT
      }

      resources {
        cpu    = var.registry_cpu
        memory = var.registry_memory
      }
    }
  }
}
