-- TimescaleDB itself. The migration runner checks beforehand that the server has it
-- installed and preloaded, so this cannot half-fail.
CREATE EXTENSION IF NOT EXISTS timescaledb;
