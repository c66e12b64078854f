//! End-to-end tests: a real hub on port 0, called through the generated clients.
//! Each test runs on SQLite and, when `LIAISON_TEST_POSTGRES_URL` is set, on
//! PostgreSQL, each time in a database of its own.

mod helpers;

mod admin;
mod architecture;
mod audit;
mod auth;
mod cases;
mod cli;
mod customers;
mod deals;
mod email;
mod events;
mod exports;
mod http;
mod mapping;
mod matrix;
mod members;
mod metrics;
mod operations;
mod partnerships;
mod replicas;
mod rules;
mod scale;
mod scorecards;
mod sequencer;
mod server;
mod sharing;
mod smtp;
mod telemetry;
mod text;
mod tls;
mod walkthrough;
mod walls;
mod webhooks;
mod webhooks_tls;
