//! Paging of the operator's list APIs: pages bounded in entries and in encoded bytes, so that
//! however many agencies connect or jobs accumulate, every answer fits the transport.

use prost::Message;

use crate::limits::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

/// The page size granted for a requested one (0: the default; at most `MAX_PAGE_SIZE`).
pub(crate) fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// What one entry of a repeated message field costs on the wire: its length, its tag and its
/// length prefix.
pub(crate) fn entry_bytes<M: Message>(entry: &M) -> usize {
    let len = entry.encoded_len();
    len + 1 + prost::length_delimiter_len(len)
}

/// Takes the first entries of `items`: at most `max`, and no more than `max_bytes` encoded,
/// but always the first one (so that paging goes forward whatever an entry's size). Returns the
/// page and whether entries are left after it.
pub(crate) fn take_page<M: Message>(
    items: impl IntoIterator<Item = M>,
    max: usize,
    max_bytes: usize,
) -> (Vec<M>, bool) {
    take_sized(items, max, max_bytes, entry_bytes)
}

/// `take_page` of entries read from storage, each of which may have failed to read (an error
/// costs nothing and ends up in the page, for the caller to report).
pub(crate) fn take_page_of<M: Message, E>(
    items: impl IntoIterator<Item = Result<M, E>>,
    max: usize,
    max_bytes: usize,
) -> (Vec<Result<M, E>>, bool) {
    take_sized(items, max, max_bytes, |r: &Result<M, E>| {
        r.as_ref().map(entry_bytes).unwrap_or(0)
    })
}

fn take_sized<T>(
    items: impl IntoIterator<Item = T>,
    max: usize,
    max_bytes: usize,
    size_of: impl Fn(&T) -> usize,
) -> (Vec<T>, bool) {
    let mut items = items.into_iter().peekable();
    let mut page = Vec::new();
    let mut bytes = 0usize;
    while let Some(item) = items.peek() {
        let size = size_of(item);
        if page.len() == max.max(1) || (!page.is_empty() && bytes + size > max_bytes) {
            return (page, true);
        }
        bytes += size;
        if let Some(item) = items.next() {
            page.push(item);
        }
    }
    (page, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use treaty_proto::v1::FederationInfo;

    fn named(n: usize, purpose_bytes: usize) -> Vec<FederationInfo> {
        (0..n)
            .map(|i| FederationInfo {
                name: format!("f{i:03}"),
                purpose: "p".repeat(purpose_bytes),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn pages_stop_at_their_size_or_their_bytes_and_always_move_on() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(u32::MAX), MAX_PAGE_SIZE);

        let (page, more) = take_page(named(10, 1), 4, usize::MAX);
        assert_eq!((page.len(), more), (4, true));
        let (page, more) = take_page(named(4, 1), 4, usize::MAX);
        assert_eq!((page.len(), more), (4, false));
        let (page, more) = take_page(named(0, 1), 4, usize::MAX);
        assert_eq!((page.len(), more), (0, false));

        // Each entry: name (2 + 4) and purpose (3 + 1000) = 1009 bytes of message, plus a tag
        // and a two-byte length: 1012. Three fit in 3036 bytes, not in 3035.
        let (page, more) = take_page(named(10, 1000), 100, 3036);
        assert_eq!((page.len(), more), (3, true));
        let (page, _) = take_page(named(10, 1000), 100, 3035);
        assert_eq!(page.len(), 2);
        // An entry larger than the whole budget still makes a page of one.
        let (page, more) = take_page(named(2, 1000), 100, 10);
        assert_eq!((page.len(), more), (1, true));
    }
}
