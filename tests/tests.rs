//! One integration-test binary (links once), with a module per area.

mod support;

mod bastion;
mod browser;
mod cli;
mod cloud;
mod controller;
mod daemon;
mod dockerfile;
mod dockerfw;
mod docs_examples;
mod ec2;
mod ec2_network;
mod engine;
pub mod examples;
mod forge;
mod host_keys;
mod hostile;
mod layout;
mod local;
mod maintenance;
mod metrics;
mod model_based;
mod mutate;
mod notify;
mod policy;
mod safety;
mod sandbox;
mod saved_plan;
mod schema;
mod stacks;
mod template;
mod testbed;
mod truth;
mod validate;
