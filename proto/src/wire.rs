//! The protobuf wire format read without a schema, for checks that must run before a message
//! is decoded.

/// How deep the chains of operands in an encoded DataFusion logical plan add up to along any
/// path: a chain `a + b + c + …` travels as one message listing its operands
/// (`BinaryExprNode { repeated operands = 1; string op = 3 }`) and decodes to a tree as deep
/// as the list is long. Every length-delimited field that parses as a message is entered;
/// a message with several field-1 messages and an operator name in field 3 counts as a chain
/// of that many operands. Bytes that are not a message measure 0 (decoding refuses them).
pub fn operand_chain_depth(bytes: &[u8]) -> usize {
    chain_depth(bytes, 0).unwrap_or(0)
}

/// prost refuses messages nested deeper than this; nothing deeper needs measuring.
const MAX_NESTING: usize = 100;

/// How deep the chains of operands along any path of this message add up to; `None`
/// when `bytes` is not a protobuf message.
fn chain_depth(bytes: &[u8], nesting: usize) -> Option<usize> {
    let fields = fields(bytes)?;
    if nesting >= MAX_NESTING {
        return Some(0);
    }
    let mut deepest = 0;
    let mut operands = 0usize;
    let mut operator = false;
    for (number, payload) in fields {
        let Some(payload) = payload else { continue };
        if number == 3 && is_operator_name(payload) {
            operator = true;
        }
        if let Some(inner) = chain_depth(payload, nesting + 1) {
            deepest = deepest.max(inner);
            if number == 1 {
                operands += 1;
            }
        }
    }
    let chain = if operator {
        operands.saturating_sub(1)
    } else {
        0
    };
    Some(deepest + chain)
}

fn is_operator_name(payload: &[u8]) -> bool {
    (2..=32).contains(&payload.len())
        && payload[0].is_ascii_uppercase()
        && payload.iter().all(u8::is_ascii_alphabetic)
}

/// A field's number, and its payload when it is length-delimited.
type Field<'a> = (u64, Option<&'a [u8]>);

/// The fields of a message; `None` when the bytes are not a well-formed message.
fn fields(mut bytes: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let number = key >> 3;
        if number == 0 {
            return None;
        }
        match key & 7 {
            0 => {
                varint(&mut bytes)?;
                out.push((number, None));
            }
            1 => {
                bytes = bytes.get(8..)?;
                out.push((number, None));
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let payload = bytes.get(..len)?;
                bytes = &bytes[len..];
                out.push((number, Some(payload)));
            }
            5 => {
                bytes = bytes.get(4..)?;
                out.push((number, None));
            }
            _ => return None,
        }
    }
    Some(out)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Field `number` as a length-delimited payload.
    fn field(number: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn chains_are_counted_and_garbage_measures_nothing() {
        let leaf = field(2, b"x");
        let chain = |operands: usize| {
            let mut message: Vec<u8> = (0..operands).flat_map(|_| field(1, &leaf)).collect();
            message.extend(field(3, b"Plus"));
            message
        };
        assert_eq!(operand_chain_depth(&chain(5)), 4);
        // A chain inside a chain's operand adds up; without an operator name it is a list.
        let nested = [field(1, &chain(5)), field(1, &leaf), field(3, b"And")].concat();
        assert_eq!(operand_chain_depth(&nested), 5);
        let list: Vec<u8> = (0..5).flat_map(|_| field(1, &leaf)).collect();
        assert_eq!(operand_chain_depth(&list), 0);
        for garbage in [&[0xff_u8, 0xff, 0xff][..], &[0x0b], &[0x0a, 0x05, 0x01]] {
            assert_eq!(operand_chain_depth(garbage), 0);
        }
    }
}
