"""Pulumi entry point of the application project (see tallyhouse_app)."""

from tallyhouse_app import program

program.run()
