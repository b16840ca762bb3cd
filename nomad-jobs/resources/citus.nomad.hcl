# PostgreSQL with Citus: one coordinator and N workers. The ingest database
# (packages and records, distributed by submitter) spans them all; the
# registry's and auth's small databases are plain tables on the coordinator.
# Every service connects to the coordinator only.
#
# Each node keeps its data on a host volume (`citus-coordinator` or
# `citus-worker`, on designated nodes: pulumi/infrastructure nodes.py) and
# runs in the host's network on 5432. Each group carries its exporter
# (postgres-exporter, as the read-only `tallyhouse_monitor` role).
# Backups: EBS snapshots of the data volumes (docs/operations.md).
#
# The `provisioner` group (one instance) makes the roles and databases from
# Vault (every service's `database` secret, the ingest database's owner, the
# monitor role), creates the citus extension in the ingest database on
# every node and adds the workers to the coordinator's metadata. It re-runs
# whenever one of those secrets or the set of workers changes: a rotated
# password reaches PostgreSQL this way. New workers hold no shards until
# they are rebalanced (docs/operations.md).
#
# The services log in with logins leased from Vault's database secrets
# engine (pulumi/application, secrets.json `database_engine`): new roles on
# the coordinator, members of the service's stable role tallyhouse_<service>,
# which every session switches to. Those stable roles keep the password of
# the service's KV `database` secret: Citus logs in to the workers as them
# (pg_dist_authinfo), and a service without the engine uses it. The engine
# itself logs in as tallyhouse_vault, which the provisioner creates on the
# coordinator once, with the password of its KV secret, and never alters
# afterwards: Vault owns that password (rotate-root).

variable "datacenters" {
  description = "Nomad datacenters the job may run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "max_connections" {
  description = "max_connections of every node (pools: services × instances × pool size, plus Citus's own)."
  type        = number
  default     = 300
}

variable "coordinator_image" {
  description = "Image repository of the Citus coordinator."
  type        = string
  default     = "citusdata/citus"
}

variable "coordinator_tag" {
  description = "Image tag of the Citus coordinator (same release as the workers)."
  type        = string
  default     = "13.0.3"
}

variable "coordinator_count" {
  description = "Coordinators (one: Citus has a single coordinator)."
  type        = number
  default     = 1
}

variable "coordinator_cpu" {
  description = "CPU of the coordinator, in MHz."
  type        = number
  default     = 1000
}

variable "coordinator_memory" {
  description = "Memory of the coordinator, in MiB."
  type        = number
  default     = 2048
}

variable "coordinator_exporter_image" {
  description = "Image repository of the coordinator's exporter."
  type        = string
  default     = "quay.io/prometheuscommunity/postgres-exporter"
}

variable "coordinator_exporter_tag" {
  description = "Image tag of the coordinator's exporter."
  type        = string
  default     = "v0.17.1"
}

variable "coordinator_exporter_cpu" {
  description = "CPU of the coordinator's exporter, in MHz."
  type        = number
  default     = 100
}

variable "coordinator_exporter_memory" {
  description = "Memory of the coordinator's exporter, in MiB."
  type        = number
  default     = 64
}

variable "worker_image" {
  description = "Image repository of the Citus workers."
  type        = string
  default     = "citusdata/citus"
}

variable "worker_tag" {
  description = "Image tag of the Citus workers (same release as the coordinator)."
  type        = string
  default     = "13.0.3"
}

variable "worker_count" {
  description = "Citus workers (each on a node with the citus-worker host volume)."
  type        = number
  default     = 2
}

variable "worker_cpu" {
  description = "CPU of one worker, in MHz."
  type        = number
  default     = 1000
}

variable "worker_memory" {
  description = "Memory of one worker, in MiB."
  type        = number
  default     = 2048
}

variable "worker_exporter_image" {
  description = "Image repository of the workers' exporter."
  type        = string
  default     = "quay.io/prometheuscommunity/postgres-exporter"
}

variable "worker_exporter_tag" {
  description = "Image tag of the workers' exporter."
  type        = string
  default     = "v0.17.1"
}

variable "worker_exporter_cpu" {
  description = "CPU of one worker's exporter, in MHz."
  type        = number
  default     = 100
}

variable "worker_exporter_memory" {
  description = "Memory of one worker's exporter, in MiB."
  type        = number
  default     = 64
}

variable "provisioner_image" {
  description = "Image repository of the provisioner (psql; the Citus image)."
  type        = string
  default     = "citusdata/citus"
}

variable "provisioner_tag" {
  description = "Image tag of the provisioner."
  type        = string
  default     = "13.0.3"
}

variable "provisioner_count" {
  description = "Instances of the provisioner (one)."
  type        = number
  default     = 1
}

variable "provisioner_cpu" {
  description = "CPU of the provisioner, in MHz."
  type        = number
  default     = 100
}

variable "provisioner_memory" {
  description = "Memory of the provisioner, in MiB."
  type        = number
  default     = 64
}

job "citus" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "30s"
    healthy_deadline  = "5m"
    progress_deadline = "15m"
    auto_revert       = true
    stagger           = "1m"
  }

  group "coordinator" {
    count = var.coordinator_count

    volume "data" {
      type      = "host"
      source    = "citus-coordinator"
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
      port "postgres" {
        static = 5432
      }
      port "exporter" {
        static = 9187
      }
    }

    service {
      name = "citus-coordinator"
      port = "postgres"
      tags = ["citus", "coordinator"]

      check {
        name     = "postgres port"
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    service {
      name = "citus-coordinator-metrics"
      port = "exporter"
      tags = ["metrics", "citus"]

      check {
        name     = "exporter"
        type     = "http"
        path     = "/metrics"
        interval = "30s"
        timeout  = "5s"
      }
    }

    task "coordinator" {
      driver = "docker"

      # PostgreSQL's "fast" shutdown on SIGINT; give checkpoints time.
      kill_signal  = "SIGINT"
      kill_timeout = "120s"

      config {
        image        = "${var.coordinator_image}:${var.coordinator_tag}"
        network_mode = "host"
        args = [
          "postgres",
          "-c", "listen_addresses=*",
          "-c", "max_connections=${var.max_connections}",
          "-c", "password_encryption=scram-sha-256",
          "-c", "wal_level=logical",
          "-c", "log_line_prefix=%m [%p] %q%u@%d ",
        ]
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/postgresql/data"
      }

      vault {
        role        = "tallyhouse-cluster-postgres"
        change_mode = "noop"
      }

      env {
        PGDATA = "/var/lib/postgresql/data/pgdata"
      }

      # The superuser's password initialises an empty data directory only;
      # the provisioner applies later changes.
      template {
        destination = "${NOMAD_SECRETS_DIR}/postgres.env"
        env         = true
        change_mode = "noop"
        data        = "{{ with secret \"secret/data/tallyhouse-cluster/postgres/superuser\" }}POSTGRES_PASSWORD={{ .Data.data.password }}{{ end }}\n"
      }

      resources {
        cpu    = var.coordinator_cpu
        memory = var.coordinator_memory
      }
    }

    task "coordinator_exporter" {
      driver = "docker"

      lifecycle {
        hook    = "poststart"
        sidecar = true
      }

      config {
        image        = "${var.coordinator_exporter_image}:${var.coordinator_exporter_tag}"
        network_mode = "host"
        args         = ["--web.listen-address=:9187"]
      }

      vault {
        role        = "tallyhouse-cluster-postgres"
        change_mode = "noop"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/exporter.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        DATA_SOURCE_URI=127.0.0.1:5432/postgres?sslmode=disable
        {{ with secret "secret/data/tallyhouse-cluster/postgres/monitor" }}DATA_SOURCE_USER={{ .Data.data.username }}
        DATA_SOURCE_PASS={{ .Data.data.password }}{{ end }}
        EOT
      }

      resources {
        cpu    = var.coordinator_exporter_cpu
        memory = var.coordinator_exporter_memory
      }
    }
  }

  group "workers" {
    count = var.worker_count

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    volume "data" {
      type      = "host"
      source    = "citus-worker"
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
      port "postgres" {
        static = 5432
      }
      port "exporter" {
        static = 9187
      }
    }

    service {
      name = "citus-worker"
      port = "postgres"
      tags = ["citus", "worker"]

      check {
        name     = "postgres port"
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    service {
      name = "citus-worker-metrics"
      port = "exporter"
      tags = ["metrics", "citus"]

      check {
        name     = "exporter"
        type     = "http"
        path     = "/metrics"
        interval = "30s"
        timeout  = "5s"
      }
    }

    task "worker" {
      driver = "docker"

      kill_signal  = "SIGINT"
      kill_timeout = "120s"

      config {
        image        = "${var.worker_image}:${var.worker_tag}"
        network_mode = "host"
        args = [
          "postgres",
          "-c", "listen_addresses=*",
          "-c", "max_connections=${var.max_connections}",
          "-c", "password_encryption=scram-sha-256",
          "-c", "wal_level=logical",
          "-c", "log_line_prefix=%m [%p] %q%u@%d ",
        ]
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/postgresql/data"
      }

      vault {
        role        = "tallyhouse-cluster-postgres"
        change_mode = "noop"
      }

      env {
        PGDATA = "/var/lib/postgresql/data/pgdata"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/postgres.env"
        env         = true
        change_mode = "noop"
        data        = "{{ with secret \"secret/data/tallyhouse-cluster/postgres/superuser\" }}POSTGRES_PASSWORD={{ .Data.data.password }}{{ end }}\n"
      }

      resources {
        cpu    = var.worker_cpu
        memory = var.worker_memory
      }
    }

    task "worker_exporter" {
      driver = "docker"

      lifecycle {
        hook    = "poststart"
        sidecar = true
      }

      config {
        image        = "${var.worker_exporter_image}:${var.worker_exporter_tag}"
        network_mode = "host"
        args         = ["--web.listen-address=:9187"]
      }

      vault {
        role        = "tallyhouse-cluster-postgres"
        change_mode = "noop"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/exporter.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        DATA_SOURCE_URI=127.0.0.1:5432/postgres?sslmode=disable
        {{ with secret "secret/data/tallyhouse-cluster/postgres/monitor" }}DATA_SOURCE_USER={{ .Data.data.username }}
        DATA_SOURCE_PASS={{ .Data.data.password }}{{ end }}
        EOT
      }

      resources {
        cpu    = var.worker_exporter_cpu
        memory = var.worker_exporter_memory
      }
    }
  }

  group "provisioner" {
    count = var.provisioner_count

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

    task "provisioner" {
      driver = "docker"

      config {
        image      = "${var.provisioner_image}:${var.provisioner_tag}"
        entrypoint = ["/bin/bash", "${NOMAD_TASK_DIR}/provision.sh"]
      }

      vault {
        role        = "tallyhouse-cluster-postgres"
        change_mode = "restart"
      }

      env {
        PGPASSFILE        = "${NOMAD_SECRETS_DIR}/pgpass"
        PGCONNECT_TIMEOUT = "5"
        # The stable roles whose members the database secrets engine creates
        # (one per role of secrets.json's database_engine).
        LEASED_GROUP_ROLES = "tallyhouse_registry tallyhouse_ingest tallyhouse_query tallyhouse_auth"
      }

      # The superuser's password for every node (libpq's password file).
      template {
        destination = "${NOMAD_SECRETS_DIR}/pgpass"
        change_mode = "restart"
        splay       = "10s"
        perms       = "0600"
        data        = "{{ with secret \"secret/data/tallyhouse-cluster/postgres/superuser\" }}*:*:*:{{ .Data.data.username }}:{{ .Data.data.password }}{{ end }}\n"
      }

      # One login role a line: "<role> <password> <database it owns or ->".
      # Every service that reads `database` in deployment/vault/secrets.json
      # has its line; query logs in to ingest's database (database_of) and
      # owns none; the ingest database belongs to its owner role, not to the
      # service role (which may only SELECT and INSERT).
      template {
        destination = "${NOMAD_SECRETS_DIR}/roles"
        change_mode = "restart"
        splay       = "10s"
        perms       = "0600"
        data        = <<-EOT
        {{ with secret "secret/data/tallyhouse/registry/database" }}{{ .Data.data.username }} {{ .Data.data.password }} tallyhouse_registry{{ end }}
        {{ with secret "secret/data/tallyhouse/auth/database" }}{{ .Data.data.username }} {{ .Data.data.password }} tallyhouse_auth{{ end }}
        {{ with secret "secret/data/tallyhouse/ingest/database" }}{{ .Data.data.username }} {{ .Data.data.password }} -{{ end }}
        {{ with secret "secret/data/tallyhouse/query/database" }}{{ .Data.data.username }} {{ .Data.data.password }} -{{ end }}
        {{ with secret "secret/data/tallyhouse-cluster/ingest-migrate/database_owner" }}{{ .Data.data.username }} {{ .Data.data.password }} tallyhouse_ingest{{ end }}
        {{ with secret "secret/data/tallyhouse-cluster/postgres/monitor" }}{{ .Data.data.username }} {{ .Data.data.password }} -{{ end }}
        EOT
      }

      # The login of Vault's database secrets engine: "<role> <password>".
      # Used only to create the role (Vault rotates the password afterwards).
      template {
        destination = "${NOMAD_SECRETS_DIR}/vault-admin"
        change_mode = "noop"
        perms       = "0600"
        data        = "{{ with secret \"secret/data/tallyhouse-cluster/postgres/vault_admin\" }}{{ .Data.data.username }} {{ .Data.data.password }}{{ end }}\n"
      }

      template {
        destination = "${NOMAD_TASK_DIR}/nodes"
        change_mode = "restart"
        splay       = "10s"
        data        = <<-EOT
        {{ range service "citus-coordinator|any" }}coordinator {{ .Address }} {{ .Port }}
        {{ end }}{{ range service "citus-worker|any" }}worker {{ .Address }} {{ .Port }}
        {{ end }}
        EOT
      }

      # Idempotent. Passwords go from the secrets files into SQL files in
      # the secrets directory, read by psql from there (never argv), with
      # statement logging off. (Shell variables are written $NAME: "$${"
      # would be HCL.)
      template {
        destination = "${NOMAD_TASK_DIR}/provision.sh"
        change_mode = "noop"
        perms       = "0755"
        data        = <<-EOT
        # shellcheck disable=SC2028 # bash's echo writes psql's backslash commands as they are
        set -euo pipefail
        sql() { psql -X -q -v ON_ERROR_STOP=1 -U postgres -h "$1" -p "$2" -d "$3" -f "$4"; }
        coord=$(awk '$1 == "coordinator" { print $2 " " $3; exit }' "$NOMAD_TASK_DIR/nodes")
        [ -n "$coord" ] || { echo "no coordinator registered yet"; exit 1; }
        mapfile -t workers < <(awk '$1 == "worker" { print $2 " " $3 }' "$NOMAD_TASK_DIR/nodes")
        for node in "$coord" "$${workers[@]}"; do
          read -r host port <<<"$node"
          until pg_isready -q -h "$host" -p "$port"; do echo "waiting for $host:$port"; sleep 5; done
        done
        roles_sql="$NOMAD_SECRETS_DIR/roles.sql"
        umask 077
        {
          echo "SET log_statement = 'none';"
          while read -r role pw owns; do
            [ -n "$role" ] || continue
            echo "\\set role '$role'"
            echo "\\set pw '$pw'"
            echo "SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \\gexec"
            echo "SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'role', :'pw') \\gexec"
          done < "$NOMAD_SECRETS_DIR/roles"
          echo "GRANT pg_monitor TO tallyhouse_monitor;"
        } > "$roles_sql"
        dbs_sql="$NOMAD_SECRETS_DIR/databases.sql"
        {
          while read -r role pw owns; do
            if [ -z "$role" ] || [ "$owns" = "-" ]; then continue; fi
            echo "\\set role '$role'"
            echo "\\set db '$owns'"
            echo "SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') AS missing \\gset"
            echo "\\if :missing"
            echo "SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role') \\gexec"
            echo "SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \\gexec"
            echo "\\endif"
          done < "$NOMAD_SECRETS_DIR/roles"
          echo "GRANT CONNECT ON DATABASE tallyhouse_ingest TO tallyhouse_ingest, tallyhouse_query;"
        } > "$dbs_sql"
        # Roles and the ingest database exist on every node (the workers
        # hold its shards); the small databases only matter on the
        # coordinator but are harmless elsewhere.
        for node in "$coord" "$${workers[@]}"; do
          read -r host port <<<"$node"
          sql "$host" "$port" postgres "$roles_sql"
          sql "$host" "$port" postgres "$dbs_sql"
          echo "CREATE EXTENSION IF NOT EXISTS citus;" > "$NOMAD_TASK_DIR/ext.sql"
          sql "$host" "$port" tallyhouse_ingest "$NOMAD_TASK_DIR/ext.sql"
        done
        # The database secrets engine's login, on the coordinator only (the
        # leased logins live there; Citus reaches the workers as the stable
        # roles): created once with CREATEROLE, NOINHERIT, then left to
        # Vault. From PostgreSQL 16 on, CREATEROLE alone no longer lets it
        # make members of other roles: it gets ADMIN on the stable roles,
        # without INHERIT or SET (it cannot use their privileges).
        read -r vault_admin vault_pw < "$NOMAD_SECRETS_DIR/vault-admin"
        [ -n "$vault_admin" ] || { echo "no vault_admin secret in Vault"; exit 1; }
        admin_sql="$NOMAD_SECRETS_DIR/vault-admin.sql"
        {
          echo "SET log_statement = 'none';"
          echo "\\set role '$vault_admin'"
          echo "\\set pw '$vault_pw'"
          echo "SELECT format('CREATE ROLE %I LOGIN CREATEROLE NOINHERIT PASSWORD %L', :'role', :'pw') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \\gexec"
          echo "SELECT current_setting('server_version_num')::int >= 160000 AS pg16 \\gset"
          echo "\\if :pg16"
          for group in $LEASED_GROUP_ROLES; do
            echo "SELECT format('GRANT %I TO %I WITH ADMIN TRUE, INHERIT FALSE, SET FALSE', '$group', :'role') \\gexec"
          done
          echo "\\endif"
        } > "$admin_sql"
        read -r chost cport <<<"$coord"
        sql "$chost" "$cport" postgres "$admin_sql"
        # The coordinator's metadata: itself, every worker, and how Citus
        # logs in to the workers for each role (pg_dist_authinfo, synced).
        meta_sql="$NOMAD_SECRETS_DIR/metadata.sql"
        {
          echo "SET log_statement = 'none';"
          echo "SELECT citus_set_coordinator_host('$chost', $cport);"
          for node in "$${workers[@]}"; do
            read -r host port <<<"$node"
            echo "SELECT citus_add_node('$host', $port) WHERE NOT EXISTS (SELECT 1 FROM pg_dist_node WHERE nodename = '$host' AND nodeport = $port);"
          done
          while read -r role pw owns; do
            [ -n "$role" ] || continue
            echo "INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo) VALUES (0, '$role', 'password=$pw') ON CONFLICT (nodeid, rolename) DO UPDATE SET authinfo = EXCLUDED.authinfo;"
          done < <(cat "$NOMAD_SECRETS_DIR/roles"; awk -F: '{ print $4 " " $5 " -" }' "$PGPASSFILE")
        } > "$meta_sql"
        sql "$chost" "$cport" tallyhouse_ingest "$meta_sql"
        rm -f "$roles_sql" "$dbs_sql" "$admin_sql" "$meta_sql"
        echo "Citus provisioned: coordinator $chost, $${#workers[@]} worker(s)"
        exec sleep 2147483647
        EOT
      }

      resources {
        cpu    = var.provisioner_cpu
        memory = var.provisioner_memory
      }
    }
  }
}
