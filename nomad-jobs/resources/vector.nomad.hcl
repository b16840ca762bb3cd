# Vector on every client node: reads every container's output from the
# Docker daemon (the services log JSON lines on stdout) and ships it to
# Loki with a small closed set of labels (environment, job, task, node,
# level). The configuration is grafana/collectors/vector.yaml, passed in as
# a variable by pulumi/application (or `-var-file` by hand). The services
# therefore run without TALLYHOUSE_LOKI_URL: Vector is the only shipper.
# Its own Prometheus endpoint (port 9598) is the group's exporter.

variable "datacenters" {
  description = "Nomad datacenters the job may run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "environment" {
  description = "Deployment name, the `environment` label of every log stream."
  type        = string
  default     = "dev"
}

variable "loki_url" {
  description = "Base URL of Loki (the /loki/api/v1/push path is appended by Vector)."
  type        = string
  default     = "http://loki.service.consul:3100"
}

variable "vector_config" {
  description = "Contents of grafana/collectors/vector.yaml."
  type        = string
  default     = ""

  validation {
    condition     = length(var.vector_config) > 0
    error_message = "Pass grafana/collectors/vector.yaml as vector_config."
  }
}

variable "vector_image" {
  description = "Image repository of Vector."
  type        = string
  default     = "timberio/vector"
}

variable "vector_tag" {
  description = "Image tag of Vector."
  type        = string
  default     = "0.47.0-debian"
}

variable "vector_cpu" {
  description = "CPU of Vector on each node, in MHz."
  type        = number
  default     = 200
}

variable "vector_memory" {
  description = "Memory of Vector on each node, in MiB."
  type        = number
  default     = 256
}

job "vector" {
  datacenters = var.datacenters
  type        = "system"

  update {
    max_parallel = 1
    stagger      = "30s"
  }

  group "vector" {
    restart {
      attempts = 5
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    network {
      port "metrics" {
        to = 9598
      }
    }

    service {
      name = "vector"
      port = "metrics"
      tags = ["metrics", "vector"]

      check {
        name     = "vector metrics"
        type     = "http"
        path     = "/metrics"
        interval = "30s"
        timeout  = "5s"
      }
    }

    task "vector" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image = "${var.vector_image}:${var.vector_tag}"
        ports = ["metrics"]
        args  = ["--config", "/local/vector.yaml"]
        # The Docker daemon's API, read only: the source of every log line.
        volumes = ["/var/run/docker.sock:/var/run/docker.sock:ro"]
      }

      env {
        LOKI_URL               = var.loki_url
        TALLYHOUSE_ENVIRONMENT = var.environment
        NODE_NAME              = "${node.unique.name}"
        VECTOR_DATA_DIR        = "/alloc/data"
      }

      # Vector's own templates use {{ }}: consul-template uses [[ ]] here.
      template {
        destination     = "${NOMAD_TASK_DIR}/vector.yaml"
        change_mode     = "restart"
        left_delimiter  = "[["
        right_delimiter = "]]"
        data            = var.vector_config
      }

      resources {
        cpu    = var.vector_cpu
        memory = var.vector_memory
      }
    }
  }
}
