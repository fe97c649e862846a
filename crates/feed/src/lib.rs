//! The change feed's gRPC contract, generated from `proto/trialbridge/v1/changes.proto`:
//! [`ChangeEvent`], [`SubscribeRequest`], the client ([`change_feed_client`]) and the server
//! trait ([`change_feed_server`]). The trial store implements the server; warehouse-sync and the
//! tests are clients.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("trialbridge.v1");

pub use tonic;
