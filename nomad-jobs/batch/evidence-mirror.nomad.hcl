# Evidence mirror: every 15 minutes, copies new evidence blobs from MinIO
# to the off-cluster backup bucket (S3), with rclone. Blobs are content
# addressed and never change, so the copy is incremental and `--immutable`
# (a blob that differs at the destination is an error, never overwritten);
# nothing is ever deleted at the destination. Recovery point: 15 minutes
# plus the run time (docs/operations.md). The MinIO side is a read-only key
# (`backup`, created by the minio job's setup task; read by the
# `tallyhouse-cluster-evidence-mirror` identity only); the S3 side uses the
# node's IAM role (rclone env_auth), so no AWS key is stored anywhere. The
# task runs in the host's network: the metadata service answers only one
# network hop away, so containers in Docker's bridge network cannot use the
# node's role (pulumi/infrastructure nodes.py).

variable "datacenters" {
  description = "Nomad datacenters the job may run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "backup_bucket" {
  description = "Backup bucket (AWS S3) receiving the evidence under evidence/."
  type        = string
  default     = "tallyhouse-dev-backups"
}

variable "backup_region" {
  description = "AWS region of the backup bucket."
  type        = string
  default     = "eu-central-1"
}

variable "evidence_mirror_image" {
  description = "Image repository of rclone."
  type        = string
  default     = "rclone/rclone"
}

variable "evidence_mirror_tag" {
  description = "Image tag of rclone."
  type        = string
  default     = "1.69.1"
}

variable "evidence_mirror_count" {
  description = "Instances of the task per run (one)."
  type        = number
  default     = 1
}

variable "evidence_mirror_cpu" {
  description = "CPU of the task, in MHz."
  type        = number
  default     = 200
}

variable "evidence_mirror_memory" {
  description = "Memory of the task, in MiB."
  type        = number
  default     = 256
}

job "evidence-mirror" {
  datacenters = var.datacenters
  type        = "batch"

  periodic {
    crons            = ["*/15 * * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "evidence_mirror" {
    count = var.evidence_mirror_count

    restart {
      attempts = 2
      interval = "15m"
      delay    = "30s"
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "evidence_mirror" {
      driver = "docker"

      kill_timeout = "30s"

      config {
        image        = "${var.evidence_mirror_image}:${var.evidence_mirror_tag}"
        network_mode = "host"
        args = [
          "copy", "minio:tallyhouse-evidence", "backup:${var.backup_bucket}/evidence",
          "--immutable", "--transfers", "8", "--checksum", "--stats-one-line", "-v",
        ]
        readonly_rootfs = true
        cap_drop        = ["all"]
      }

      vault {
        role        = "tallyhouse-cluster-evidence-mirror"
        change_mode = "noop"
      }

      env {
        RCLONE_CONFIG_BACKUP_TYPE     = "s3"
        RCLONE_CONFIG_BACKUP_PROVIDER = "AWS"
        RCLONE_CONFIG_BACKUP_ENV_AUTH = "true"
        RCLONE_CONFIG_BACKUP_REGION   = var.backup_region
        RCLONE_CONFIG_MINIO_TYPE      = "s3"
        RCLONE_CONFIG_MINIO_PROVIDER  = "Minio"
        RCLONE_CACHE_DIR              = "${NOMAD_TASK_DIR}/cache"
        RCLONE_CONFIG                 = "${NOMAD_TASK_DIR}/rclone.conf"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/rclone.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
        {{ with secret "secret/data/tallyhouse-cluster/minio/backup" }}RCLONE_CONFIG_MINIO_ACCESS_KEY_ID={{ .Data.data.access_key_id }}
        RCLONE_CONFIG_MINIO_SECRET_ACCESS_KEY={{ .Data.data.secret_access_key }}{{ end }}
        {{ with service "minio-s3" }}{{ with index . 0 }}RCLONE_CONFIG_MINIO_ENDPOINT=http://{{ .Address }}:{{ .Port }}{{ end }}{{ end }}
        EOT
      }

      resources {
        cpu    = var.evidence_mirror_cpu
        memory = var.evidence_mirror_memory
      }
    }
  }
}
