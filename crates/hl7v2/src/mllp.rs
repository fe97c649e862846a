//! MLLP framing: `<VT> message <FS><CR>`. A [`Framer`] takes bytes as they arrive (split or
//! coalesced reads) and yields whole frames; bytes outside a frame are skipped and counted,
//! and a frame longer than the limit is dropped up to its end and reported.
//!
//! A VT inside an open frame starts a new frame: the sender lost the end of the previous one
//! (a dropped FS), so what came before is incomplete and is reported as
//! [`FrameEvent::Abandoned`], never delivered, so it is never acknowledged and never merged
//! with the next message. (A VT cannot occur inside HL7 text: it is not a printable
//! character, and the escape sequences of HL7 encode such bytes as `\X0B\`.)

/// Start of a frame.
pub const VT: u8 = 0x0B;
/// End of a frame (followed by CR).
pub const FS: u8 = 0x1C;
/// Carriage return.
pub const CR: u8 = 0x0D;

/// What the framer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEvent {
    /// A complete frame's content (between VT and FS).
    Frame(Vec<u8>),
    /// A frame exceeded the limit and was discarded up to its end.
    TooLarge {
        /// The frame's size in bytes.
        size: usize,
    },
    /// A frame was cut short by the start of the next one (its FS was lost): its bytes are
    /// dropped unacknowledged, so the sender resends it.
    Abandoned {
        /// How many bytes the incomplete frame held.
        size: usize,
    },
}

/// Incremental MLLP deframer.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    in_frame: bool,
    oversize: Option<usize>,
    max: usize,
    skipped: usize,
}

impl Framer {
    /// A framer that refuses frames over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            in_frame: false,
            oversize: None,
            max,
            skipped: 0,
        }
    }

    /// Bytes seen outside any frame (garbage between frames).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Whether a frame has started and not ended.
    pub fn in_frame(&self) -> bool {
        self.in_frame
    }

    /// Feeds bytes; returns the events they complete, in order.
    pub fn push(&mut self, data: &[u8]) -> Vec<FrameEvent> {
        let mut out = Vec::new();
        for &b in data {
            if !self.in_frame {
                if b == VT {
                    self.in_frame = true;
                    self.buf.clear();
                    self.oversize = None;
                } else if b != CR && b != b'\n' {
                    self.skipped += 1;
                }
                continue;
            }
            match b {
                FS => {
                    self.in_frame = false;
                    match self.oversize.take() {
                        Some(size) => out.push(FrameEvent::TooLarge { size }),
                        None => out.push(FrameEvent::Frame(std::mem::take(&mut self.buf))),
                    }
                }
                // A doubled start byte opens nothing new.
                VT if self.oversize.is_none() && self.buf.is_empty() => {}
                VT => {
                    let size = self.oversize.take().unwrap_or(self.buf.len());
                    out.push(FrameEvent::Abandoned { size });
                    self.buf.clear();
                }
                _ => match &mut self.oversize {
                    Some(n) => *n += 1,
                    None if self.buf.len() >= self.max => {
                        self.oversize = Some(self.buf.len() + 1);
                        self.buf = Vec::new();
                    }
                    None => self.buf.push(b),
                },
            }
        }
        out
    }
}

/// Wraps a message in an MLLP frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(VT);
    out.extend_from_slice(message);
    out.push(FS);
    out.push(CR);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_coalesced_reads() {
        let mut f = Framer::new(1024);
        let mut all = frame(b"MSH|a");
        all.extend(frame(b"MSH|b"));
        let mut events = Vec::new();
        for chunk in all.chunks(3) {
            events.extend(f.push(chunk));
        }
        assert_eq!(
            events,
            [
                FrameEvent::Frame(b"MSH|a".to_vec()),
                FrameEvent::Frame(b"MSH|b".to_vec())
            ]
        );
    }

    #[test]
    fn garbage_and_oversize() {
        let mut f = Framer::new(4);
        let mut data = b"junk".to_vec();
        data.extend(frame(b"MSH|toolong"));
        data.extend(frame(b"MSH|"));
        let events = f.push(&data);
        assert_eq!(
            events,
            [
                FrameEvent::TooLarge { size: 11 },
                FrameEvent::Frame(b"MSH|".to_vec())
            ]
        );
        assert_eq!(f.skipped(), 4);
        f.push(&[VT, b'M']);
        assert!(f.in_frame());
    }

    #[test]
    fn a_start_byte_inside_a_frame_starts_a_new_frame() {
        let mut f = Framer::new(1024);
        // A's end byte is lost: B's VT arrives while A is open.
        let mut data = vec![VT];
        data.extend_from_slice(b"MSH|a\r");
        data.extend(frame(b"MSH|b"));
        assert_eq!(
            f.push(&data),
            [
                FrameEvent::Abandoned { size: 6 },
                FrameEvent::Frame(b"MSH|b".to_vec())
            ]
        );
        // The same across reads, and after an oversize frame.
        let mut f = Framer::new(4);
        assert!(f.push(&[VT, b'1', b'2', b'3', b'4', b'5']).is_empty());
        assert_eq!(
            f.push(&frame(b"MSH")),
            [
                FrameEvent::Abandoned { size: 5 },
                FrameEvent::Frame(b"MSH".to_vec())
            ]
        );
    }
}
