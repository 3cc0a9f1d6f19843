//! The SSE cursor's properties, for `crate::fuzzing::sse_cursor` (here because the cursor's
//! signer is private to `sse`).

use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac;

use super::{CursorError, CursorSigner, CURSOR_MAC_BYTES, CURSOR_V2_PREFIX};
use crate::channel::ChannelName;
use crate::engine::Position;

const SECRET: &str = "fuzz-api-key-0123456789abcdef0123456789";

/// One case: a broker-made cursor, attacker text, or an attacker payload with a valid MAC;
/// `true` when a cursor decoded.
pub(crate) fn cursor(u: &mut Unstructured<'_>) -> Result<bool> {
    let signer = CursorSigner::new(SECRET);
    let channels = channels(u)?;
    match u.int_in_range(0..=2)? {
        0 => broker_made(u, &signer, &channels),
        1 => {
            let text = String::from_utf8_lossy(u.bytes(u.len())?).into_owned();
            match signer.decode(&text, &channels) {
                // Only with this key's MACs over these channels and the payload.
                Ok(positions) => {
                    assert_eq!(positions.len(), channels.len());
                    assert!(carries_valid_macs(&signer, &text, &channels), "{text:?}");
                    Ok(true)
                }
                Err(CursorError::ChannelCount { want, .. }) => {
                    assert_eq!(want, channels.len());
                    Ok(false)
                }
                Err(_) => Ok(false),
            }
        }
        _ => {
            // Payloads of the fuzzer's choosing, each with a valid MAC: version 2 (one per
            // channel) or version 1 (one for all), which is still read.
            let sealed = if u.arbitrary()? {
                let mut parts = Vec::with_capacity(channels.len());
                for channel in &channels {
                    let len = u.int_in_range(0..=40)?;
                    let mut bytes = u.bytes(len)?.to_vec();
                    let tag = signer.position_mac(channel, &bytes).finalize().into_bytes();
                    bytes.extend_from_slice(&tag[..CURSOR_MAC_BYTES]);
                    parts.push(URL_SAFE_NO_PAD.encode(bytes));
                }
                format!("{CURSOR_V2_PREFIX}{}", parts.join("."))
            } else {
                let mut bytes = u.bytes(u.len())?.to_vec();
                let mut mac = signer.mac.clone();
                CursorSigner::feed(&mut mac, &channels, &bytes);
                bytes.extend_from_slice(&mac.finalize().into_bytes()[..CURSOR_MAC_BYTES]);
                URL_SAFE_NO_PAD.encode(bytes)
            };
            match signer.decode(&sealed, &channels) {
                Ok(positions) => {
                    assert_eq!(positions.len(), channels.len());
                    let again = signer.encode(&channels, &positions);
                    assert_eq!(signer.decode(&again, &channels).ok(), Some(positions));
                    Ok(true)
                }
                Err(CursorError::Signature) => panic!("a valid MAC refused: {sealed}"),
                Err(CursorError::ChannelCount { want, .. }) => {
                    assert_eq!(want, channels.len());
                    Ok(false)
                }
                Err(CursorError::Malformed) => Ok(false),
            }
        }
    }
}

/// Whether `text` ends each signed part with the MAC this key gives it (an independent
/// check of what `decode` accepted).
fn carries_valid_macs(signer: &CursorSigner, text: &str, channels: &[ChannelName]) -> bool {
    let split = |part: &str| {
        let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
        let at = bytes.len().checked_sub(CURSOR_MAC_BYTES)?;
        let (payload, tag) = bytes.split_at(at);
        Some((payload.to_vec(), tag.to_vec()))
    };
    match text.strip_prefix(CURSOR_V2_PREFIX) {
        Some(signed) => signed.split('.').zip(channels).all(|(part, channel)| {
            split(part).is_some_and(|(payload, tag)| {
                signer
                    .position_mac(channel, &payload)
                    .finalize()
                    .into_bytes()[..CURSOR_MAC_BYTES]
                    == tag[..]
            })
        }),
        None => split(text).is_some_and(|(payload, tag)| {
            let mut mac = signer.mac.clone();
            CursorSigner::feed(&mut mac, channels, &payload);
            mac.finalize().into_bytes()[..CURSOR_MAC_BYTES] == tag[..]
        }),
    }
}

/// A cursor as the broker sends it decodes to its positions, for these channels and this
/// key only, and not once any byte of it changed.
fn broker_made(
    u: &mut Unstructured<'_>,
    signer: &CursorSigner,
    channels: &[ChannelName],
) -> Result<bool> {
    let positions = channels
        .iter()
        .map(|_| position(u))
        .collect::<Result<Vec<_>>>()?;
    let cursor = signer.encode(channels, &positions);
    assert!(cursor.starts_with(CURSOR_V2_PREFIX));
    assert!(cursor
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
    assert_eq!(
        signer.decode(&cursor, channels).ok().as_ref(),
        Some(&positions)
    );
    assert!(matches!(
        CursorSigner::new("another installation's key").decode(&cursor, channels),
        Err(CursorError::Signature)
    ));
    let fewer = &channels[1..];
    assert!(signer.decode(&cursor, fewer).is_err());
    let mut other = channels.to_vec();
    let renamed = ChannelName::parse(&format!("{}x", other[0])).expect("still a valid name");
    if !other.contains(&renamed) {
        other[0] = renamed;
        other.sort_unstable();
        assert!(matches!(
            signer.decode(&cursor, &other),
            Err(CursorError::Signature)
        ));
    }
    // One byte of one signed part changed.
    let mut parts: Vec<String> = cursor.split('.').map(str::to_owned).collect();
    let index = 1 + u.choose_index(parts.len() - 1)?;
    let mut bytes = URL_SAFE_NO_PAD.decode(&parts[index]).expect("base64url");
    let at = u.choose_index(bytes.len())?;
    bytes[at] ^= u.int_in_range(1..=255)?;
    parts[index] = URL_SAFE_NO_PAD.encode(bytes);
    let changed = parts.join(".");
    assert!(
        signer.decode(&changed, channels).is_err(),
        "byte {at} of part {index} changed"
    );
    Ok(true)
}

/// 1 to 8 distinct valid channel names, sorted (as a stream keeps them).
fn channels(u: &mut Unstructured<'_>) -> Result<Vec<ChannelName>> {
    const REST: &[u8] = b"AZaz09_-.:@=,/";
    let mut channels = Vec::new();
    for i in 0..u.int_in_range(1..=8)? {
        let namespace = *u.choose(&["public", "course", "user", "a-b_9"])?;
        let rest: String = (0..u.int_in_range(1..=24)?)
            .map(|_| u.choose(REST).map(|b| char::from(*b)))
            .collect::<Result<_>>()?;
        let name = format!("{namespace}:{i}{rest}");
        channels.push(ChannelName::parse(&name).expect("made from the allowed alphabet"));
    }
    channels.sort_unstable();
    channels.dedup();
    Ok(channels)
}

/// A position: epochs as the memory engine makes them (even-length lower-case hex) or any
/// other short text (a future engine's), any offset.
fn position(u: &mut Unstructured<'_>) -> Result<Position> {
    let epoch = match u.int_in_range(0..=2)? {
        0 => {
            let len = u.int_in_range(0..=16)?;
            hex::encode(u.bytes(len)?)
        }
        1 => {
            let text: String = u.arbitrary()?;
            text.chars().take(32).collect()
        }
        _ => {
            let hexish = b"0123456789abcdefABCDEF";
            (0..u.int_in_range(0..=17)?)
                .map(|_| u.choose(hexish).map(|b| char::from(*b)))
                .collect::<Result<_>>()?
        }
    };
    Ok(Position {
        epoch: Arc::from(epoch),
        offset: u.arbitrary()?,
    })
}
