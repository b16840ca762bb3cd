# RabbitMQ: three nodes clustered through Consul peer discovery, carrying
# the RPC bus. Every Tallyhouse queue is a quorum queue (the services
# declare them so, and `default_queue_type = quorum` covers anything else);
# the `tallyhouse-rpc` policy gives the request queues a delivery limit and
# lossless dead-lettering as well as the queue arguments the services set
# (docs/rpc.md), so a poison message can never loop forever, even on a
# queue declared by something else. Quorum queues keep a majority of 2 of 3: one node can be
# lost or restarted at a time (the update below) without losing a confirmed
# message or availability.
#
# Each node needs the `rabbitmq` host volume (its data; only three nodes
# have it) and runs in the host's network (Erlang distribution between
# nodes). Its own Prometheus plugin (port 15692) is the group's exporter.
# The `setup` group creates the Tallyhouse user from Vault (the `amqp`
# secret every service reads; one shared user), the policy, and re-applies
# them whenever the secrets change.

variable "datacenters" {
  description = "Nomad datacenters the job may run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "delivery_limit" {
  description = "Deliveries of one request before it is dead-lettered (the tallyhouse-rpc policy; the services set the same as a queue argument)."
  type        = number
  default     = 5
}

variable "rabbitmq_image" {
  description = "Image repository of RabbitMQ (with the management plugin, used by the setup task)."
  type        = string
  default     = "rabbitmq"
}

variable "rabbitmq_tag" {
  description = "Image tag of RabbitMQ."
  type        = string
  default     = "4.1.4-management"
}

variable "rabbitmq_count" {
  description = "RabbitMQ nodes (3: quorum queues keep a majority through the loss of one)."
  type        = number
  default     = 3
}

variable "rabbitmq_cpu" {
  description = "CPU of one RabbitMQ task, in MHz."
  type        = number
  default     = 1000
}

variable "rabbitmq_memory" {
  description = "Memory of one RabbitMQ task, in MiB (the high watermark is 0.6 of it)."
  type        = number
  default     = 1536
}

variable "rabbitmq_setup_image" {
  description = "Image repository of the setup task (curl)."
  type        = string
  default     = "curlimages/curl"
}

variable "rabbitmq_setup_tag" {
  description = "Image tag of the setup task."
  type        = string
  default     = "8.13.0"
}

variable "rabbitmq_setup_count" {
  description = "Instances of the setup task (one)."
  type        = number
  default     = 1
}

variable "rabbitmq_setup_cpu" {
  description = "CPU of the setup task, in MHz."
  type        = number
  default     = 100
}

variable "rabbitmq_setup_memory" {
  description = "Memory of the setup task, in MiB."
  type        = number
  default     = 64
}

job "rabbitmq" {
  datacenters = var.datacenters
  type        = "service"

  # One node at a time, and only once the restarted one is healthy again:
  # the quorum queues keep their majority throughout.
  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "30s"
    healthy_deadline  = "5m"
    progress_deadline = "15m"
    auto_revert       = true
    stagger           = "1m"
  }

  group "rabbitmq" {
    count = var.rabbitmq_count

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    volume "data" {
      type      = "host"
      source    = "rabbitmq"
      read_only = false
    }

    restart {
      attempts = 5
      interval = "10m"
      delay    = "20s"
      mode     = "delay"
    }

    reschedule {
      delay          = "1m"
      delay_function = "exponential"
      max_delay      = "30m"
      unlimited      = true
    }

    network {
      mode = "host"
      port "amqp" {
        static = 5672
      }
      port "management" {
        static = 15672
      }
      port "prometheus" {
        static = 15692
      }
      port "epmd" {
        static = 4369
      }
      port "dist" {
        static = 25672
      }
    }

    service {
      name = "rabbitmq-amqp"
      port = "amqp"
      tags = ["rabbitmq"]

      check {
        name     = "amqp port"
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }

      check {
        name     = "node health"
        type     = "http"
        port     = "prometheus"
        path     = "/metrics"
        interval = "30s"
        timeout  = "5s"
      }
    }

    service {
      name = "rabbitmq-management"
      port = "management"
      tags = ["rabbitmq"]

      check {
        name     = "management api"
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # The group's exporter: the rabbitmq_prometheus plugin.
    service {
      name = "rabbitmq-metrics"
      port = "prometheus"
      tags = ["metrics", "rabbitmq"]

      check {
        name     = "prometheus endpoint"
        type     = "http"
        path     = "/metrics"
        interval = "30s"
        timeout  = "5s"
      }
    }

    task "rabbitmq" {
      driver = "docker"

      # A node hands its queue leaderships over before it stops.
      kill_timeout = "90s"

      config {
        image        = "${var.rabbitmq_image}:${var.rabbitmq_tag}"
        network_mode = "host"
        volumes = [
          "local/rabbitmq.conf:/etc/rabbitmq/rabbitmq.conf",
          "secrets/admin.conf:/etc/rabbitmq/conf.d/10-admin.conf",
          "local/enabled_plugins:/etc/rabbitmq/enabled_plugins",
          "secrets/erlang.cookie:/var/lib/rabbitmq/.erlang.cookie",
        ]
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/rabbitmq/mnesia"
      }

      vault {
        role        = "tallyhouse-cluster-rabbitmq"
        change_mode = "noop"
      }

      env {
        RABBITMQ_NODENAME = "rabbit@${attr.unique.hostname}"
      }

      # The cluster's shared secret, readable by the rabbitmq user only.
      template {
        destination = "${NOMAD_SECRETS_DIR}/erlang.cookie"
        change_mode = "noop"
        perms       = "0400"
        uid         = 999
        gid         = 999
        data        = "{{ with secret \"secret/data/tallyhouse-cluster/rabbitmq/erlang_cookie\" }}{{ .Data.data.cookie }}{{ end }}"
      }

      # The administrator, created on the cluster's first boot (no guest
      # user then); the setup task logs in with it.
      template {
        destination = "${NOMAD_SECRETS_DIR}/admin.conf"
        change_mode = "noop"
        perms       = "0440"
        uid         = 999
        gid         = 999
        data        = <<-EOT
        {{ with secret "secret/data/tallyhouse-cluster/rabbitmq/admin" }}default_user = {{ .Data.data.username }}
        default_pass = {{ .Data.data.password }}{{ end }}
        default_user_tags.administrator = true
        default_permissions.configure = .*
        default_permissions.read = .*
        default_permissions.write = .*
        EOT
      }

      template {
        destination = "${NOMAD_TASK_DIR}/enabled_plugins"
        change_mode = "noop"
        data        = "[rabbitmq_management,rabbitmq_prometheus,rabbitmq_peer_discovery_consul].\n"
      }

      template {
        destination = "${NOMAD_TASK_DIR}/rabbitmq.conf"
        change_mode = "noop"
        data        = <<-EOT
        cluster_formation.peer_discovery_backend = consul
        cluster_formation.consul.host = 127.0.0.1
        cluster_formation.consul.port = 8500
        cluster_formation.consul.svc = rabbitmq-cluster
        cluster_formation.consul.svc_addr_use_nodename = true
        cluster_formation.consul.use_longname = false
        cluster_formation.consul.svc_ttl = 30
        cluster_formation.consul.deregister_after = 600
        cluster_formation.target_cluster_size_hint = 3
        cluster_partition_handling = pause_minority
        default_queue_type = quorum
        vm_memory_high_watermark.relative = 0.6
        disk_free_limit.absolute = 2GB
        loopback_users.guest = true
        listeners.tcp.default = 5672
        management.tcp.port = 15672
        prometheus.tcp.port = 15692
        log.console = true
        log.console.formatter = json
        EOT
      }

      resources {
        cpu    = var.rabbitmq_cpu
        memory = var.rabbitmq_memory
      }
    }
  }

  group "setup" {
    count = var.rabbitmq_setup_count

    restart {
      attempts = 10
      interval = "10m"
      delay    = "20s"
      mode     = "delay"
    }

    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      max_delay      = "5m"
      unlimited      = true
    }

    task "rabbitmq_setup" {
      driver = "docker"

      config {
        image      = "${var.rabbitmq_setup_image}:${var.rabbitmq_setup_tag}"
        entrypoint = ["/bin/sh", "${NOMAD_TASK_DIR}/setup.sh"]
      }

      vault {
        role        = "tallyhouse-cluster-rabbitmq"
        change_mode = "restart"
      }

      env {
        DELIVERY_LIMIT = var.delivery_limit
      }

      # The administrator and every service's `amqp` secret (one shared
      # user today: the script applies each distinct user name once).
      # curl reads the credentials from files here, never from its argv.
      template {
        destination = "${NOMAD_SECRETS_DIR}/admin.netrc"
        change_mode = "restart"
        splay       = "10s"
        perms       = "0400"
        data        = <<-EOT
        {{ with secret "secret/data/tallyhouse-cluster/rabbitmq/admin" }}{{ $user := .Data.data.username }}{{ $pass := .Data.data.password }}{{ range service "rabbitmq-management|any" }}machine {{ .Address }} login {{ $user }} password {{ $pass }}
        {{ end }}{{ end }}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/users"
        change_mode = "restart"
        splay       = "10s"
        perms       = "0400"
        data        = <<-EOT
        {{ with secret "secret/data/tallyhouse/gateway/amqp" }}{{ .Data.data.username }} {{ .Data.data.password }}{{ end }}
        {{ with secret "secret/data/tallyhouse/registry/amqp" }}{{ .Data.data.username }} {{ .Data.data.password }}{{ end }}
        {{ with secret "secret/data/tallyhouse/ingest/amqp" }}{{ .Data.data.username }} {{ .Data.data.password }}{{ end }}
        {{ with secret "secret/data/tallyhouse/query/amqp" }}{{ .Data.data.username }} {{ .Data.data.password }}{{ end }}
        {{ with secret "secret/data/tallyhouse/auth/amqp" }}{{ .Data.data.username }} {{ .Data.data.password }}{{ end }}
        {{ with secret "secret/data/tallyhouse/cli/amqp" }}{{ .Data.data.username }} {{ .Data.data.password }}{{ end }}
        EOT
      }

      # Request queues (<ns>.<service>.v<N>), not their dead-letter queues.
      template {
        destination = "${NOMAD_TASK_DIR}/policy.json"
        change_mode = "noop"
        data        = <<-EOT
        {"pattern": "^tallyhouse\\.[a-z0-9-]+\\.v[0-9]+$", "apply-to": "quorum_queues", "priority": 0,
         "definition": {"delivery-limit": {{ env "DELIVERY_LIMIT" }}, "dead-letter-exchange": "tallyhouse.rpc.dead-letter",
                        "dead-letter-strategy": "at-least-once", "overflow": "reject-publish"}}
        EOT
      }

      template {
        destination = "${NOMAD_TASK_DIR}/nodes"
        change_mode = "noop"
        data        = "{{ range service \"rabbitmq-management|any\" }}{{ .Address }}:{{ .Port }}\n{{ end }}"
      }

      # Idempotent. Runs against the first node that answers, then stays up
      # so that a changed secret re-runs it (change_mode = restart).
      # (Shell variables are written $NAME: "$${" would be HCL.)
      template {
        destination = "${NOMAD_TASK_DIR}/setup.sh"
        change_mode = "noop"
        perms       = "0755"
        data        = <<-EOT
        set -eu
        api() { curl -fsS --netrc-file "$NOMAD_SECRETS_DIR/admin.netrc" -H 'content-type: application/json' "$@"; }
        node=""
        while [ -z "$node" ]; do
          while read -r n; do
            [ -n "$n" ] || continue
            if api -o /dev/null "http://$n/api/overview"; then node="$n"; break; fi
          done < "$NOMAD_TASK_DIR/nodes"
          [ -n "$node" ] || { echo "waiting for a RabbitMQ node"; sleep 5; }
        done
        # Users: the password goes in a request body built in a file.
        body="$NOMAD_SECRETS_DIR/user.json"
        sort -u "$NOMAD_SECRETS_DIR/users" | while read -r name pw; do
          [ -n "$name" ] || continue
          printf '{"password": "%s", "tags": ""}' "$pw" > "$body"
          api -X PUT --data-binary "@$body" "http://$node/api/users/$name" -o /dev/null
          api -X PUT --data-binary '{"configure": ".*", "write": ".*", "read": ".*"}' "http://$node/api/permissions/%2f/$name" -o /dev/null
          rm -f "$body"
        done
        api -X PUT --data-binary "@$NOMAD_TASK_DIR/policy.json" "http://$node/api/policies/%2f/tallyhouse-rpc" -o /dev/null
        echo "RabbitMQ set up through $node: users and policy tallyhouse-rpc"
        exec sleep 2147483647
        EOT
      }

      resources {
        cpu    = var.rabbitmq_setup_cpu
        memory = var.rabbitmq_setup_memory
      }
    }
  }
}
