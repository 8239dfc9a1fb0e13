//! Writes a self-signed certificate for `localhost` and `127.0.0.1` and its key, for
//! trying TLS locally and for the tests that need one (no key is ever committed):
//!
//! ```text
//! cargo run --example dev_cert -- /tmp/stellar-tls
//! stellar --tls-cert /tmp/stellar-tls/cert.pem --tls-key /tmp/stellar-tls/key.pem
//! ```
//!
//! Clients must trust `cert.pem` (e.g. Node: `new WebSocket(url, { ca })`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: dev_cert <directory>")?,
    );
    std::fs::create_dir_all(&dir)?;
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    std::fs::write(dir.join("cert.pem"), made.cert.pem())?;
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem())?;
    println!("{}", dir.join("cert.pem").display());
    Ok(())
}
