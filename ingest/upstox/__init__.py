"""The Upstox Market Data Feed V3 on the wire: its protobuf, the decoder, and its constants.

Imports nothing else of ingest (an import contract in pyproject.toml says so).
"""
