//! Message files as people have them: one message or several, with CR, LF or CRLF segment
//! ends, bare or in MLLP frames (`<VT> message <FS><CR>`, what `mllp_send --file` and the
//! README's `printf` write), or a batch file (FHS/BHS ... BTS/FTS). [`split_file`] cuts a file
//! into its messages, each with the line it starts on, so a tool can check each one alone and
//! say where it is.

use crate::mllp::{CR, FS, VT};

/// One message of a file: where it starts and its bytes (without MLLP framing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMessage<'a> {
    /// 1-based line of the file the message starts on (CR, LF and CRLF each end a line).
    pub line: usize,
    /// The message's bytes; a batch (FHS/BHS envelope) is one entry holding the whole batch.
    pub bytes: &'a [u8],
}

/// Why a file cannot be cut into messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Nothing but whitespace (and framing bytes).
    #[error("the file holds no message")]
    Empty,
    /// An MLLP frame starts and never ends.
    #[error("line {line}: an MLLP frame starts here (byte 0x0B) and has no end (0x1C)")]
    UnterminatedFrame {
        /// Line of the frame's start.
        line: usize,
    },
    /// Text outside the MLLP frames of a framed file.
    #[error("line {line}: text outside an MLLP frame in a file of framed messages")]
    OutsideFrame {
        /// Line of the first such byte.
        line: usize,
    },
}

/// Line numbers of byte offsets: CR, LF and CRLF each end one line.
struct Lines<'a> {
    bytes: &'a [u8],
    at: usize,
    line: usize,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            at: 0,
            line: 1,
        }
    }

    /// The line of `offset` (offsets asked for in increasing order).
    fn of(&mut self, offset: usize) -> usize {
        while self.at < offset.min(self.bytes.len()) {
            match self.bytes[self.at] {
                b'\n' => self.line += 1,
                b'\r' if self.bytes.get(self.at + 1) != Some(&b'\n') => self.line += 1,
                _ => {}
            }
            self.at += 1;
        }
        self.line
    }
}

/// Cuts a file into its messages. A file with MLLP framing bytes is read frame by frame
/// (whitespace between frames is allowed, anything else is an error); a file without them is
/// cut before every line that starts with `MSH`, unless it is a batch file (its first segment
/// FHS or BHS), which stays one entry for the batch parser to check its counts.
pub fn split_file(bytes: &[u8]) -> Result<Vec<FileMessage<'_>>, FileError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut lines = Lines::new(bytes);
    let mut out = Vec::new();
    if bytes.contains(&VT) {
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                VT => {
                    let start = i + 1;
                    let Some(len) = bytes[start..].iter().position(|&b| b == FS) else {
                        return Err(FileError::UnterminatedFrame { line: lines.of(i) });
                    };
                    let content = &bytes[start..start + len];
                    if content.iter().any(|b| !b.is_ascii_whitespace()) {
                        let lead = content
                            .iter()
                            .position(|b| !b.is_ascii_whitespace())
                            .unwrap_or(0);
                        out.push(FileMessage {
                            line: lines.of(start + lead),
                            bytes: &content[lead..],
                        });
                    }
                    i = start + len + 1;
                    if bytes.get(i) == Some(&CR) {
                        i += 1;
                    }
                }
                b if b.is_ascii_whitespace() => i += 1,
                _ => return Err(FileError::OutsideFrame { line: lines.of(i) }),
            }
        }
    } else {
        // Segment starts: offset 0 and every byte after a line end.
        let mut starts = vec![0];
        starts.extend(
            bytes
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\r' || b == b'\n')
                .map(|(i, _)| i + 1),
        );
        let segment_at = |s: usize| {
            let rest = &bytes[s.min(bytes.len())..];
            let lead = rest
                .iter()
                .position(|b| *b != b' ' && *b != b'\t')
                .unwrap_or(rest.len());
            (&rest[lead..], s + lead)
        };
        let first = starts
            .iter()
            .map(|&s| segment_at(s))
            .find(|(rest, _)| rest.first().is_some_and(|b| !b.is_ascii_whitespace()));
        let Some((first_segment, _)) = first else {
            return Err(FileError::Empty);
        };
        if first_segment.starts_with(b"FHS") || first_segment.starts_with(b"BHS") {
            let lead = bytes
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(0);
            return Ok(vec![FileMessage {
                line: lines.of(lead),
                bytes: &bytes[lead..],
            }]);
        }
        // Anything before the first MSH belongs to the first message (so the parser reports
        // it as a message that does not start with MSH, with its line).
        let mut cuts: Vec<usize> = starts
            .iter()
            .map(|&s| segment_at(s))
            .filter(|(rest, _)| rest.starts_with(b"MSH"))
            .map(|(_, at)| at)
            .collect();
        let lead = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(0);
        if cuts.first() != Some(&lead) {
            cuts.insert(0, lead);
        }
        cuts.dedup();
        for (k, &from) in cuts.iter().enumerate() {
            let to = cuts.get(k + 1).copied().unwrap_or(bytes.len());
            out.push(FileMessage {
                line: lines.of(from),
                bytes: &bytes[from..to],
            });
        }
    }
    if out.is_empty() {
        return Err(FileError::Empty);
    }
    Ok(out)
}

/// The line, counted from 1 at the start of `bytes`, of byte `offset` (CR, LF, CRLF end a
/// line): turns a parse error's byte offset inside one message into a line of its file.
pub fn line_of(bytes: &[u8], offset: usize) -> usize {
    Lines::new(bytes).of(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use proptest::prelude::*;

    const A: &str = "MSH|^~\\&|LAB|KH|TB|SP|20260302||ORU^R01|A1|P|2.5.1\rPID|1||4711^^^KH^MR\rOBX|1|NM|BMI||27.4\r";
    const B: &str = "MSH|^~\\&|LAB|KH|TB|SP|20260302||ADT^A01|B2|P|2.5.1\rPID|1||4712^^^KH^MR\r";

    fn ids(file: &[u8]) -> Vec<(usize, String)> {
        split_file(file)
            .unwrap()
            .into_iter()
            .map(|m| (m.line, Message::parse(m.bytes).unwrap().control_id()))
            .collect()
    }

    #[test]
    fn a_framed_file_as_the_readme_writes_it_is_one_message() {
        let file = format!("\x0b{A}\x1c\r");
        assert_eq!(ids(file.as_bytes()), vec![(1, "A1".to_string())]);
    }

    #[test]
    fn several_messages_with_any_line_ends_are_cut_at_msh_with_their_lines() {
        for end in ["\r", "\n", "\r\n"] {
            let file = format!("{A}{B}").replace('\r', end);
            assert_eq!(
                ids(file.as_bytes()),
                vec![(1, "A1".to_string()), (4, "B2".to_string())],
                "line end {end:?}"
            );
        }
    }

    #[test]
    fn framed_messages_on_lines_of_their_own() {
        // Segments end in CRLF; the frame end sits on a line of its own, as `printf` writes it.
        let (a, b) = (A.replace('\r', "\r\n"), B.replace('\r', "\r\n"));
        let file = format!("\x0b{a}\x1c\r\n\x0b{b}\x1c\r\n");
        assert_eq!(
            ids(file.as_bytes()),
            vec![(1, "A1".to_string()), (5, "B2".to_string())]
        );
    }

    #[test]
    fn broken_framing_is_named_with_its_line() {
        let file = format!("\x0b{A}\x1c\r\x0b{B}");
        assert_eq!(
            split_file(file.as_bytes()),
            Err(FileError::UnterminatedFrame { line: 5 })
        );
        let file = format!("\x0b{A}\x1c\rnot a frame\r");
        assert_eq!(
            split_file(file.as_bytes()),
            Err(FileError::OutsideFrame { line: 5 })
        );
        assert_eq!(split_file(b" \r\n\t"), Err(FileError::Empty));
        assert_eq!(split_file(b"\x0b\x1c\r"), Err(FileError::Empty));
    }

    #[test]
    fn text_before_the_first_msh_is_a_message_the_parser_refuses() {
        let file = format!("hello\r{A}");
        let parts = split_file(file.as_bytes()).unwrap();
        assert_eq!(parts.len(), 2);
        assert!(Message::parse(parts[0].bytes).is_err());
        assert_eq!(parts[1].line, 2);
    }

    #[test]
    fn a_batch_file_stays_one_entry() {
        let file = format!("FHS|^~\\&\rBHS|^~\\&\r{A}{B}BTS|2\rFTS|1\r");
        let parts = split_file(file.as_bytes()).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(crate::parse_batch(parts[0].bytes).unwrap().len(), 2);
    }

    proptest! {
        /// Whatever the line ends, framing and blank lines between them, a file of n messages
        /// gives back those n messages in order, each starting on the line it was written on.
        #[test]
        fn any_layout_gives_back_every_message_on_its_line(
            picks in proptest::collection::vec(any::<bool>(), 1..6),
            end in prop_oneof![Just("\r"), Just("\n"), Just("\r\n")],
            framed in any::<bool>(),
            blank in 0usize..3,
        ) {
            let mut file = String::new();
            let mut expected = Vec::new();
            let mut line = 1;
            for (k, pick) in picks.iter().enumerate() {
                let msg = if *pick { A } else { B }.replace("|A1|", &format!("|A{k}|")).replace("|B2|", &format!("|B{k}|"));
                let id = if *pick { format!("A{k}") } else { format!("B{k}") };
                for _ in 0..blank {
                    file.push_str(end);
                    line += 1;
                }
                expected.push((line, id));
                let body = msg.replace('\r', end);
                line += msg.matches('\r').count();
                if framed {
                    file.push('\x0b');
                    file.push_str(&body);
                    file.push_str("\x1c\r");
                    if end != "\r" { file.push('\n'); }
                    line += 1;
                } else {
                    file.push_str(&body);
                }
            }
            prop_assert_eq!(ids(file.as_bytes()), expected);
        }
    }
}
