//! The gRPC change feed (`proto/trialbridge/v1/changes.proto`): `ChangeFeed.Subscribe` streams
//! every committed version after a cursor, in change-sequence order, read through the same
//! storage history as `_history` (so a subscriber sees exactly what the sequence holds: commits
//! are serialised and `seq` is assigned inside them, so nothing below a seen sequence can
//! appear later). Its own listener (`TRIALBRIDGE_GRPC_LISTEN`); the warehouse (or system) role
//! only; each subscription is audited.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};
use trialbridge_auth::Interaction;
use trialbridge_feed::change_feed_server::{ChangeFeed, ChangeFeedServer};
use trialbridge_feed::{ChangeEvent, Operation, SubscribeRequest};
use trialbridge_storage::{HistoryQuery, HistoryScope, Role, StoredVersion};

use crate::fhir::StoreState;
use crate::security::Caller;

/// Versions read per storage page.
const PAGE: usize = 500;

/// How often a following subscriber that has caught up looks for new commits.
const POLL: Duration = Duration::from_millis(50);

struct Feed {
    state: StoreState,
}

fn event(v: StoredVersion) -> ChangeEvent {
    let operation = if v.deleted {
        Operation::Delete
    } else if v.version == 1 {
        Operation::Create
    } else {
        Operation::Update
    };
    ChangeEvent {
        sequence: v.seq,
        resource_type: v.resource_type,
        id: v.id,
        version: v.version,
        operation: operation as i32,
        site: v.site.unwrap_or_default(),
        resource_json: v.body.unwrap_or_default(),
        last_updated: v.last_updated,
        traceparent: v.traceparent.unwrap_or_default(),
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<ChangeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ChangeFeed for Feed {
    type SubscribeStream = Events;

    async fn subscribe(&self, req: Request<SubscribeRequest>) -> Result<Response<Events>, Status> {
        let address = req.remote_addr().map(|a| a.ip().to_string());
        let token = trialbridge_auth::bearer(
            req.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        );
        let verified = match token {
            None => Err(trialbridge_auth::AuthError::Missing),
            Some(t) => self.state.auth.verify(t).await,
        };
        let principal = match verified {
            Ok(p) => p,
            Err(e) => {
                // A refused subscription is recorded like a refused HTTP request.
                let why = e.to_string();
                crate::security::audit::refused(
                    &*self.state.store,
                    "gRPC ChangeFeed.Subscribe",
                    address.as_deref(),
                    &why,
                )
                .await;
                return Err(Status::unauthenticated(why));
            }
        };
        let r = req.into_inner();
        let caller = Caller::from_principal(
            principal,
            None,
            format!(
                "gRPC ChangeFeed.Subscribe after_sequence={} types={} follow={}",
                r.after_sequence,
                r.resource_types.join(","),
                r.follow
            ),
            address,
        );
        let allowed = caller
            .require_role(&[Role::Warehouse, Role::System], "follow the change feed")
            .and_then(|()| {
                if r.resource_types.is_empty() {
                    caller.require_every_type(Interaction::Search)
                } else {
                    r.resource_types
                        .iter()
                        .try_for_each(|t| caller.require(t, Interaction::Search))
                }
            });
        let status = if allowed.is_ok() {
            crate::error::Status::Ok
        } else {
            crate::error::Status::Forbidden
        };
        crate::security::audit::request(
            &*self.state.store,
            &caller,
            "/fhir/_history",
            status.code(),
            caller.own_site().map(String::from),
        )
        .await;
        if let Err(e) = allowed {
            return Err(Status::permission_denied(
                e.outcome()
                    .issues
                    .first()
                    .map(|i| i.diagnostics.clone())
                    .unwrap_or_default(),
            ));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ChangeEvent, Status>>(PAGE);
        let store = self.state.store.clone();
        tokio::spawn(async move {
            let mut after = r.after_sequence.max(0);
            loop {
                let page = store
                    .history(
                        &caller.ctx,
                        &HistoryQuery::oldest_first(HistoryScope::System, after, PAGE),
                    )
                    .await;
                let page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                        return;
                    }
                };
                let caught_up = page.versions.is_empty();
                for v in page.versions {
                    after = v.seq;
                    if !r.resource_types.is_empty() && !r.resource_types.contains(&v.resource_type)
                    {
                        continue;
                    }
                    if tx.send(Ok(event(v))).await.is_err() {
                        return; // the subscriber went away
                    }
                }
                if caught_up {
                    if !r.follow {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves the change feed on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: StoreState,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(ChangeFeedServer::new(Feed { state }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
