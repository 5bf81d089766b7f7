//! The README's quickstart must keep working: run the demo once and check it
//! made a real JWT-signed call through the tunnel.

use std::process::{Command, Stdio};

#[test]
fn the_demo_makes_a_signed_call_through_the_tunnel() {
    let out = Command::new(env!("CARGO_BIN_EXE_postern-demo"))
        .arg("--once")
        .stdin(Stdio::null())
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("→ 200 OK"), "{stdout}");
    assert!(stdout.contains("your JWT checked out"), "{stdout}");
    assert!(
        stdout.contains("curl -s -H 'Authorization: Bearer psk_"),
        "{stdout}"
    );
    // Its own socket, beside its config: as root the default is the system agent's.
    let folder_of = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|path| {
                std::path::Path::new(path.trim())
                    .parent()
                    .map(|p| p.to_owned())
            })
    };
    let config = folder_of("agent config").flatten();
    let socket = folder_of("agent status").flatten();
    assert!(config.is_some() && config == socket, "{stdout}");
}
