"""Pulumi entry point of the infrastructure project (see tallyhouse_infra)."""

from tallyhouse_infra import program

program.run()
