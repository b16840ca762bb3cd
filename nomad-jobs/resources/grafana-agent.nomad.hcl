# grafana-agent on every client node: scrapes the metrics endpoints of the
# node's own allocations (every Consul service tagged `metrics`: the
# services' ops ports 9180-9184 and the exporters of the resource jobs) and
# remote-writes them to Mimir. The configuration is
# grafana/collectors/agent.yaml, passed in as a variable by
# pulumi/application. Its own /metrics is the group's exporter.
# (Grafana Agent is end of life since November 2025; Grafana Alloy reads the
# same scrape configuration through `alloy convert` when the move is made.)

variable "datacenters" {
  description = "Nomad datacenters the job may run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "environment" {
  description = "Deployment name, the `environment` label of every series."
  type        = string
  default     = "dev"
}

variable "mimir_url" {
  description = "Mimir's remote-write URL."
  type        = string
  default     = "http://mimir.service.consul:9009/api/v1/push"
}

variable "agent_config" {
  description = "Contents of grafana/collectors/agent.yaml."
  type        = string
  default     = ""

  validation {
    condition     = length(var.agent_config) > 0
    error_message = "Pass grafana/collectors/agent.yaml as agent_config."
  }
}

variable "grafana_agent_image" {
  description = "Image repository of grafana-agent."
  type        = string
  default     = "grafana/agent"
}

variable "grafana_agent_tag" {
  description = "Image tag of grafana-agent."
  type        = string
  default     = "v0.44.2"
}

variable "grafana_agent_cpu" {
  description = "CPU of grafana-agent on each node, in MHz."
  type        = number
  default     = 200
}

variable "grafana_agent_memory" {
  description = "Memory of grafana-agent on each node, in MiB."
  type        = number
  default     = 256
}

job "grafana-agent" {
  datacenters = var.datacenters
  type        = "system"

  update {
    max_parallel = 1
    stagger      = "30s"
  }

  group "grafana_agent" {
    restart {
      attempts = 5
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    network {
      mode = "host"
      port "http" {
        static = 12345
      }
    }

    service {
      name = "grafana-agent"
      port = "http"
      tags = ["metrics", "grafana-agent"]

      check {
        name     = "agent ready"
        type     = "http"
        path     = "/-/ready"
        interval = "30s"
        timeout  = "5s"
      }
    }

    task "grafana_agent" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image        = "${var.grafana_agent_image}:${var.grafana_agent_tag}"
        network_mode = "host"
        args = [
          "-config.file=/local/agent.yaml",
          "-config.expand-env",
          "-server.http.address=0.0.0.0:12345",
          "-metrics.wal-directory=/alloc/data/wal",
        ]
      }

      env {
        MIMIR_URL              = var.mimir_url
        TALLYHOUSE_ENVIRONMENT = var.environment
        NODE_NAME              = "${node.unique.name}"
      }

      template {
        destination     = "${NOMAD_TASK_DIR}/agent.yaml"
        change_mode     = "restart"
        left_delimiter  = "[["
        right_delimiter = "]]"
        data            = var.agent_config
      }

      resources {
        cpu    = var.grafana_agent_cpu
        memory = var.grafana_agent_memory
      }
    }
  }
}
