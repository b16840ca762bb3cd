# Fabio: the HTTP router on every client node, fed by Consul. It routes only
# to services tagged `urlprefix-` (the gateway alone) and only to instances
# whose checks pass. The load balancer sends the public traffic to its proxy
# port 9999 on every client and checks its /health on 9998; nothing else of
# the cluster is reachable from the load balancer (pulumi/infrastructure).
# Fabio appends the client's address to X-Forwarded-For (the load balancer
# keeps it: TLS is terminated there, TCP passes through), which the gateway
# reads (TALLYHOUSE_CLIENT_ADDR_HEADER). Its Prometheus endpoint (on the UI
# port) is the group's exporter.

variable "datacenters" {
  description = "Nomad datacenters the job may run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "fabio_image" {
  description = "Image repository of Fabio."
  type        = string
  default     = "fabiolb/fabio"
}

variable "fabio_tag" {
  description = "Image tag of Fabio."
  type        = string
  default     = "1.6.4"
}

variable "fabio_cpu" {
  description = "CPU of Fabio on each node, in MHz."
  type        = number
  default     = 200
}

variable "fabio_memory" {
  description = "Memory of Fabio on each node, in MiB."
  type        = number
  default     = 128
}

job "fabio" {
  datacenters = var.datacenters
  type        = "system"

  update {
    max_parallel = 1
    stagger      = "30s"
  }

  group "fabio" {
    restart {
      attempts = 5
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    network {
      mode = "host"
      port "proxy" {
        static = 9999
      }
      port "ui" {
        static = 9998
      }
    }

    service {
      name = "fabio"
      port = "ui"
      tags = ["metrics", "fabio"]

      check {
        name     = "fabio health"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "fabio" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image        = "${var.fabio_image}:${var.fabio_tag}"
        network_mode = "host"
      }

      env {
        FABIO_registry_consul_addr          = "127.0.0.1:8500"
        FABIO_registry_consul_register_enabled = "false"
        FABIO_proxy_addr                    = ":9999;proto=http"
        FABIO_ui_addr                       = ":9998"
        FABIO_metrics_target                = "prometheus"
        FABIO_log_access_target             = "stdout"
        FABIO_log_access_format             = "combined"
        FABIO_proxy_shutdownwait            = "10s"
      }

      resources {
        cpu    = var.fabio_cpu
        memory = var.fabio_memory
      }
    }
  }
}
