"""The Tallyhouse application on an existing Nomad cluster: Vault policies,
roles, secrets and the database secrets engine from
deployment/vault/secrets.json, and every job of nomad-jobs/ with the tasks
of Pulumi.<env>.yaml. `program.run()` is the Pulumi program."""
