"""The AWS infrastructure of a Tallyhouse environment: network, Nomad and
Consul servers and clients, jumphost, security groups, load balancer, IAM,
backup bucket and snapshots, Cloudflare DNS. `program.run()` is the Pulumi
program; `sizing` holds the capacity rules (pure Python)."""
