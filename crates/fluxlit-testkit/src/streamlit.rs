//! Just enough of Streamlit's WebSocket protocol (protobuf over `/_stcore/stream`) for tests.
//! Field numbers come from Streamlit 1.67's `BackMsg.proto` / `ForwardMsg.proto`; see
//! `docs/streamlit-protocol-notes.md`.

/// `BackMsg { rerun_script (11): ClientState {} }`: makes the server run the script.
pub const RERUN_SCRIPT: [u8; 2] = [0x5a, 0x00];

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The bytes of the length-delimited field reached by following `path` (field numbers) from
/// the top of `msg`, if present.
pub fn field_path<'a>(msg: &'a [u8], path: &[u64]) -> Option<&'a [u8]> {
    let (&want, rest) = path.split_first()?;
    let mut pos = 0;
    while pos < msg.len() {
        let key = varint(msg, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(msg, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(varint(msg, &mut pos)?).ok()?;
                let body = msg.get(pos..pos.checked_add(len)?)?;
                pos += len;
                if field == want {
                    return if rest.is_empty() {
                        Some(body)
                    } else {
                        field_path(body, rest)
                    };
                }
            }
            _ => return None,
        }
    }
    None
}

/// Whether a `ForwardMsg` carries `script_finished` (field 6, a varint, at the top level;
/// docs/streamlit-protocol-notes.md).
pub fn script_finished(msg: &[u8]) -> bool {
    let mut pos = 0;
    while pos < msg.len() {
        let Some(key) = varint(msg, &mut pos) else {
            return false;
        };
        match key & 7 {
            0 => {
                if varint(msg, &mut pos).is_none() {
                    return false;
                }
                if key >> 3 == 6 {
                    return true;
                }
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => match varint(msg, &mut pos).and_then(|l| usize::try_from(l).ok()) {
                Some(len) => pos = pos.saturating_add(len),
                None => return false,
            },
            _ => return false,
        }
    }
    false
}

/// The session id in a `ForwardMsg.new_session(4).initialize(1).session_id(6)` frame.
pub fn session_id(frame: &[u8]) -> Option<String> {
    field_path(frame, &[4, 1, 6]).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_script_finished_at_the_top_level_only() {
        // metadata (2) { field 6: varint 0 }, then script_finished (6): 0
        let msg = [0x12, 0x02, 0x30, 0x00, 0x30, 0x00];
        assert!(script_finished(&msg));
        assert!(!script_finished(&msg[..4]), "only nested");
        assert!(!script_finished(&[0x12, 0x7f]), "truncated");
    }

    #[test]
    fn walks_nested_fields() {
        // field 4 { field 2: varint 1, field 1 { field 6: "abc" } }
        let inner = [0x32, 3, b'a', b'b', b'c'];
        let mut mid = vec![0x10, 1, 0x0a, inner.len() as u8];
        mid.extend_from_slice(&inner);
        let mut top = vec![0x22, mid.len() as u8];
        top.extend_from_slice(&mid);
        assert_eq!(session_id(&top).as_deref(), Some("abc"));
        assert_eq!(field_path(&top, &[5]), None);
        assert_eq!(field_path(&[0x22, 50], &[4]), None, "truncated input");
    }
}
