//! The management API host: the request body read within `max_api_body_bytes`, handed to the
//! lifecycle with the client's failure budget, and its answer written whole or streamed.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{Method, header};
use pingora::http::ResponseHeader;
use pingora::prelude::{Result, Session};

use super::reply::{Reply, send, write_full};
use super::{WakewayProxy, client_ip};
use crate::ApiBody;
use crate::ratelimit::FailureBudget;
use crate::refusal::Reason;

impl WakewayProxy {
    pub(super) async fn serve_api(&self, session: &mut Session) -> Result<bool> {
        let max = self.settings.max_api_body_bytes;
        let Some(body) = read_body(session, max).await? else {
            return send(session, "", Reply::Refuse(Reason::BodyTooLarge { max })).await;
        };
        let req = session.req_header();
        let budget = FailureBudget::new(self.api_failures.clone(), client_ip(session));
        let mut builder = http::Request::builder().method(req.method.clone()).uri(req.uri.clone()).extension(budget);
        if let Some(headers) = builder.headers_mut() {
            headers.extend(req.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let Ok(request) = builder.body(body) else {
            return send(session, "", Reply::Refuse(Reason::UnreadableRequest)).await;
        };
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let response = self.lifecycle.api(request, client).await;
        let (parts, body) = response.into_parts();
        let mut header = ResponseHeader::from(parts);
        match body {
            ApiBody::Full(body) => {
                header.insert_header(header::CONTENT_LENGTH, body.len())?;
                write_full(session, header, body).await
            }
            ApiBody::Stream(chunks) => write_stream(session, header, chunks).await,
        }
    }
}

/// The request body, or None when it is (or says it is) over `max` bytes.
async fn read_body(session: &mut Session, max: usize) -> Result<Option<Bytes>> {
    let declared =
        session.req_header().headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Ok(None);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// A streamed API answer (its header carries the Content-Length), chunk by chunk as they come.
async fn write_stream(
    session: &mut Session,
    header: ResponseHeader,
    mut chunks: BoxStream<'static, std::io::Result<Bytes>>,
) -> Result<bool> {
    if session.req_header().method == Method::HEAD {
        session.write_response_header(Box::new(header), true).await?;
        return Ok(true);
    }
    session.write_response_header(Box::new(header), false).await?;
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => session.write_response_body(Some(chunk), false).await?,
            Err(e) => {
                // The status is sent: all that is left is to cut the connection short of its
                // Content-Length, so the client sees the failure.
                tracing::warn!(error = %e, "API response stream failed");
                session.set_keepalive(None);
                return Err(pingora::Error::because(pingora::ErrorType::WriteError, "API response stream failed", e));
            }
        }
    }
    session.write_response_body(None, true).await?;
    Ok(true)
}
