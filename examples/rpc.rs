//! RPC between two nodes: requests answered by a handler, deadlines, and
//! one-way messages.
//!
//! Node 2 installs a request handler that serves two application
//! operations: `price` (a quote for an order, encoded as a serde struct
//! with `octopii::rpc::serialize`) and `slow` (which takes longer than its
//! caller is willing to wait). Node 1 asks, gets answers, sees a timeout
//! and an unknown operation refused, and sends one-way messages that node 2
//! reads from its queue.
//!
//! ```sh
//! cargo run -p octopii-examples --example rpc
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use octopii::rpc::{OneWayMessage, RequestPayload, ResponsePayload, RpcError, RpcHandler, RpcRequest};
use octopii::transport::QuicTransport;
use octopii::{OctopiiError, OctopiiRuntime};
use serde::{Deserialize, Serialize};

/// How long node 1 waits for an ordinary answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long node 1 waits for `slow`, and how long `slow` takes. The
/// handler runs on the transport's own task and holds up everything else
/// that node does meanwhile (and a thread of its runtime): real handlers
/// answer at once and hand long work to a task of their own.
const SLOW_TIMEOUT: Duration = Duration::from_millis(50);
const SLOW_WORK: Duration = Duration::from_millis(150);

/// The argument of `price`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    item: String,
    quantity: u32,
}

/// The answer to `price`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Quote {
    item: String,
    total_cents: u64,
}

async fn start(root: &Path, id: u64) -> anyhow::Result<Arc<QuicTransport>> {
    let identity = octopii_mio::identity::load_identity(&root.join(format!("node-{id}")), id, None)?;
    let config = octopii_mio::identity::transport_config(id, identity);
    Ok(Arc::new(QuicTransport::new("127.0.0.1:0".parse()?, config).await?))
}

/// Node 2's request handler. It gets each request with the id of the node
/// that sent it (proved by its certificate) and returns the response.
fn handle(request: RpcRequest) -> ResponsePayload {
    let RequestPayload::Custom { operation, data } = request.payload else {
        return ResponsePayload::Error { message: "only custom operations are served here".into() };
    };
    match operation.as_str() {
        "price" => {
            // Bytes from the network are untrusted: a bad payload is an
            // error answer, never a panic.
            let order: Order = match octopii::rpc::deserialize(&data) {
                Ok(order) => order,
                Err(error) => return ResponsePayload::Error { message: format!("bad order: {error}") },
            };
            let quote = Quote { total_cents: 250 * u64::from(order.quantity), item: order.item };
            match octopii::rpc::serialize(&quote) {
                Ok(data) => ResponsePayload::CustomResponse { success: true, data },
                Err(error) => ResponsePayload::Error { message: error.to_string() },
            }
        }
        "slow" => {
            std::thread::sleep(SLOW_WORK);
            ResponsePayload::CustomResponse { success: true, data: Bytes::new() }
        }
        other => ResponsePayload::Error {
            message: format!("unknown operation {other:?} from node {}", request.from),
        },
    }
}

fn custom(operation: &str, data: Bytes) -> RequestPayload {
    RequestPayload::Custom { operation: operation.into(), data }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let started = Instant::now();
    let one = start(root.path(), 1).await?;
    // Node 2 runs on a runtime of its own, as it would in its own process:
    // its handler blocks a thread while `slow` works, which must not hold
    // up node 1 (a transport runs on the runtime it is made on).
    let server_runtime = OctopiiRuntime::new(1);
    let server_root = root.path().to_path_buf();
    let two = server_runtime.spawn(async move { start(&server_root, 2).await }).await??;
    let (client, server) = (RpcHandler::new(one.clone()), RpcHandler::new(two.clone()));
    server.set_request_handler(handle).await?;
    let server_addr = two.local_addr();
    println!("node 2 serves requests on {server_addr}");

    // A request and its response; the first one also connects.
    for (item, quantity) in [("widget", 4), ("gadget", 10)] {
        let order = octopii::rpc::serialize(&Order { item: item.into(), quantity })?;
        let asked = Instant::now();
        let response = client.request(server_addr, custom("price", order), REQUEST_TIMEOUT).await?;
        let ResponsePayload::CustomResponse { success: true, data } = response.payload else {
            anyhow::bail!("price: unexpected answer {:?}", response.payload);
        };
        let quote: Quote = octopii::rpc::deserialize(&data)?;
        println!(
            "price of {quantity} {item}: {quote:?} (request {:?}, {:.2?})",
            response.message_id,
            asked.elapsed()
        );
        anyhow::ensure!(
            quote == Quote { item: item.into(), total_cents: 250 * u64::from(quantity) },
            "wrong quote"
        );
    }

    // A request the handler refuses comes back as an error payload.
    let response = client.request(server_addr, custom("refund", Bytes::new()), REQUEST_TIMEOUT).await?;
    println!("refund: {:?}", response.payload);
    anyhow::ensure!(matches!(response.payload, ResponsePayload::Error { .. }), "refund must be refused");

    // No answer within the deadline: the request fails with `TimedOut`
    // and a late answer is dropped.
    let asked = Instant::now();
    match client.request(server_addr, custom("slow", Bytes::new()), SLOW_TIMEOUT).await {
        Err(OctopiiError::Rpc(error @ RpcError::TimedOut { .. })) => {
            println!("slow: {error} (gave up after {:.2?})", asked.elapsed());
        }
        other => anyhow::bail!("slow must time out, got {other:?}"),
    }

    // One-way messages: sent without waiting for an answer, read by the
    // receiver from one queue for all peers, with the sender's id.
    let messages = [
        OneWayMessage::Heartbeat { node_id: 1, timestamp: 42 },
        OneWayMessage::Custom {
            operation: "restock".into(),
            data: octopii::rpc::serialize(&("widget", 100u32))?,
        },
    ];
    for message in &messages {
        client.send_one_way(server_addr, message.clone()).await?;
    }
    for expected in messages {
        let received = tokio::time::timeout(REQUEST_TIMEOUT, server.recv_one_way()).await?;
        println!("node 2 got a one-way message: {received:?}");
        anyhow::ensure!(received == Some((1, expected)), "one-way messages arrive in order, from node 1");
    }

    // After the timeout the link still serves requests.
    let order = octopii::rpc::serialize(&Order { item: "widget".into(), quantity: 1 })?;
    let response = client.request(server_addr, custom("price", order), REQUEST_TIMEOUT).await?;
    anyhow::ensure!(matches!(response.payload, ResponsePayload::CustomResponse { success: true, .. }));

    one.close().await;
    two.close().await;
    println!("done in {:.2?}", started.elapsed());
    Ok(())
}
