//! The web tier over HTTP against a real database, the S3 stand-in and the kie.ai stand-in.

mod accessibility;
mod api_errors;
mod billing;
mod browser;
mod console;
mod drain;
mod exports;
mod gallery;
mod generations;
mod history;
mod live_status;
mod openapi;
mod pages;
mod policy;
mod privacy;
mod readme;
mod security;
mod signin;
mod site;
mod support;
mod variations;
