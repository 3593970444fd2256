//! Joins a session from the terminal: each line read is sent as a point
//! (`kind value`, or any text as a `note` point), and every event of the
//! session is printed.
//!
//! ```sh
//! SESH_TOKEN=$(cargo -q xtask token --user alice --plan pro) \
//!   cargo run -p sesh-client --example join -- http://127.0.0.1:8787 <session id>
//! ```

#[cfg(not(target_arch = "wasm32"))]
mod app {
    use sesh_client::protocol::NewPoint;
    use sesh_client::{Client, Event};
    use tokio::io::{AsyncBufReadExt, BufReader};

    #[tokio::main]
    pub async fn main() {
        let mut args = std::env::args().skip(1);
        let (Some(base), Some(session)) = (args.next(), args.next()) else {
            eprintln!("usage: join <base url> <session id>   (token in SESH_TOKEN)");
            std::process::exit(2);
        };
        let Ok(token) = std::env::var("SESH_TOKEN") else {
            eprintln!("set SESH_TOKEN to a token (cargo xtask token --user U)");
            std::process::exit(2);
        };
        let client = Client::new(base, token);
        let mut live = client.join(&session);
        let sender = live.sender();
        tokio::spawn(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let point = to_point(&line);
                let sender = sender.clone();
                tokio::spawn(async move {
                    match sender.send(point).await {
                        Ok(ack) => println!("ack   seq {} (id {})", ack.seq, ack.id),
                        Err(e) => println!("error {e}"),
                    }
                });
            }
            sender.close();
        });
        while let Some(event) = live.next_event().await {
            match event {
                Event::Connected {
                    conn_id,
                    last_seq,
                    participants,
                    ..
                } => println!(
                    "in    as {conn_id}, lastSeq {last_seq}, {} connected",
                    participants.len()
                ),
                Event::Joined(p) => println!("join  {} ({})", p.user_id, p.conn_id),
                Event::Left { user_id, conn_id } => println!("left  {user_id} ({conn_id})"),
                Event::Point(p) => println!(
                    "point #{} {} {} {}",
                    p.seq,
                    p.user_id,
                    p.kind,
                    p.value.map(|v| v.to_string()).unwrap_or_default()
                ),
                Event::Members { members, viewers } => {
                    println!("roles writers {members:?}, viewers {viewers:?}")
                }
                Event::Removed => println!("removed from the session"),
                Event::Signal { user_id, data, .. } => println!("sig   {user_id} {data:?}"),
                Event::State { user_id, data, .. } => println!("state {user_id} {data:?}"),
                Event::Ended { last_seq } => println!("ended at seq {last_seq}"),
                Event::Error(e) => println!("error {e}"),
                Event::Disconnected { retry_in } => println!("drop  retry in {retry_in:?}"),
            }
        }
    }

    /// `kind value` with a number becomes a point with a value; anything else
    /// a `note` with the text in `data`.
    fn to_point(line: &str) -> NewPoint {
        let mut words = line.split_whitespace();
        if let (Some(kind), Some(Ok(value)), None) = (
            words.next(),
            words.next().map(str::parse::<f64>),
            words.next(),
        ) {
            let mut p = NewPoint::new(kind);
            p.value = Some(value);
            return p;
        }
        let mut p = NewPoint::new("note");
        let mut data = serde_json::Map::new();
        data.insert("text".into(), line.into());
        p.data = Some(data);
        p
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    app::main()
}

// A terminal program: there is nothing to run in a browser.
#[cfg(target_arch = "wasm32")]
fn main() {}
