//! Cutting a deferred job's items into remote batches: in input order, each part at most the
//! provider's request count (or the job's `max_batch_items`, if lower) and byte size. An item
//! too large for a batch on its own is left out: the sync walk takes it.

/// An item and its bytes in a batch.
pub type Entry<T> = (T, Vec<u8>);

/// Parts of `entries`, and the items that fit in none.
pub fn split<T>(
    entries: Vec<Entry<T>>,
    max_items: usize,
    max_bytes: usize,
) -> (Vec<Vec<Entry<T>>>, Vec<T>) {
    let max_items = max_items.max(1);
    let mut parts: Vec<Vec<Entry<T>>> = Vec::new();
    let mut too_large = Vec::new();
    let mut bytes = 0usize;
    for (item, entry) in entries {
        if entry.len() > max_bytes {
            too_large.push(item);
            continue;
        }
        let full = parts
            .last()
            .is_none_or(|p| p.len() >= max_items || bytes + entry.len() > max_bytes);
        if full {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += entry.len();
        if let Some(last) = parts.last_mut() {
            last.push((item, entry));
        }
    }
    (parts, too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(sizes: &[usize]) -> Vec<(usize, Vec<u8>)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (i, vec![b'x'; n]))
            .collect()
    }

    fn shape(parts: &[Vec<(usize, Vec<u8>)>]) -> Vec<Vec<usize>> {
        parts
            .iter()
            .map(|p| p.iter().map(|(i, _)| *i).collect())
            .collect()
    }

    #[test]
    fn parts_hold_at_most_the_count_and_the_bytes_in_input_order() {
        let (parts, big) = split(entries(&[10; 7]), 3, 1000);
        assert_eq!(shape(&parts), [vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        assert!(big.is_empty());
        let (parts, _) = split(entries(&[40, 40, 40, 10, 90]), 10, 100);
        assert_eq!(shape(&parts), [vec![0, 1], vec![2, 3], vec![4]]);
        // Exactly the limit fits.
        let (parts, _) = split(entries(&[50, 50]), 2, 100);
        assert_eq!(shape(&parts), [vec![0, 1]]);
    }

    #[test]
    fn an_item_larger_than_a_batch_is_left_out() {
        let (parts, big) = split(entries(&[10, 200, 10]), 10, 100);
        assert_eq!(shape(&parts), [vec![0, 2]]);
        assert_eq!(big, [1]);
        let (parts, big) = split(Vec::<(usize, Vec<u8>)>::new(), 10, 100);
        assert!(parts.is_empty() && big.is_empty());
    }
}
