"""Ingestion: sniff and parse uploaded files (in a limited child process), split them into chunks."""
