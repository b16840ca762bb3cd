# Query: read-only access to the stored evidence over RPC. It reads the
# ingest database (tallyhouse_ingest on the Citus coordinator) with its own
# role, which `ingest migrate --reader-role` grants SELECT only, and the
# evidence bucket in MinIO with a read-only key. It reads its credentials
# from Vault itself, its database logins leased from Vault's database
# secrets engine (role tallyhouse-query: members of tallyhouse_query); the
# templates render only where the brokers, the database and MinIO are, and
# the versions of its KV secrets.

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

variable "query_image" {
  description = "Image repository of query."
  type        = string
  default     = "ghcr.io/tallyhouse/query"
}

variable "query_tag" {
  description = "Image tag of query (Pulumi.<env>.yaml; CI bumps dev's)."
  type        = string
  default     = "0.1.0"
}

variable "query_count" {
  description = "Query instances."
  type        = number
  default     = 2
}

variable "query_cpu" {
  description = "CPU of one query task, in MHz."
  type        = number
  default     = 500
}

variable "query_memory" {
  description = "Memory of one query task, in MiB."
  type        = number
  default     = 384
}

job "query" {
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

  group "query" {
    count = var.query_count

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
        to = 9183
      }
    }

    service {
      name = "tallyhouse-query-metrics"
      port = "metrics"
      tags = ["metrics", "tallyhouse"]

      check {
        name     = "query health"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }

      check {
        name     = "query ready"
        type     = "http"
        path     = "/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "query" {
      driver = "docker"

      # In-flight calls drain within 20 s (ServerOptions::drain_timeout).
      kill_signal  = "SIGINT"
      kill_timeout = "30s"

      config {
        image           = "${var.query_image}:${var.query_tag}"
        ports           = ["metrics"]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-query"
        change_mode = "restart"
      }

      env {
        VAULT_ADDR               = var.vault_addr
        TALLYHOUSE_ENVIRONMENT   = var.environment
        TALLYHOUSE_METRICS_ADDR  = "0.0.0.0:9183"
        TALLYHOUSE_DATABASE_NAME = "tallyhouse_ingest"
        TALLYHOUSE_S3_BUCKET     = "tallyhouse-evidence"
        # Database logins leased from Vault's database secrets engine, each
        # a member of tallyhouse_query: every session switches to that stable
        # role (its grants, its objects). The KV `database` secret is not read.
        TALLYHOUSE_DATABASE_VAULT_ROLE  = "tallyhouse-query"
        TALLYHOUSE_DATABASE_VAULT_MOUNT = "database"
        TALLYHOUSE_DATABASE_GROUP_ROLE  = "tallyhouse_query"
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
        {{ end }}{{ with service "minio-s3" }}{{ with index . 0 }}TALLYHOUSE_S3_ENDPOINT=http://{{ .Address }}:{{ .Port }}{{ end }}{{ end }}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/secret-versions"
        change_mode = "restart"
        splay       = "2m"
        data        = <<-EOT
        amqp={{ with secret "secret/data/tallyhouse/query/amqp" }}{{ .Data.metadata.version }}{{ end }}
        s3={{ with secret "secret/data/tallyhouse/query/s3" }}{{ .Data.metadata.version }}{{ end }}
        EOT
      }

      resources {
        cpu    = var.query_cpu
        memory = var.query_memory
      }
    }
  }
}
