//! "Did you mean …?": the candidate a typo most likely meant. Pure.

/// The candidate closest to `word` by edit distance, if close enough to be a typo.
pub fn closest<'b>(word: &str, candidates: &[&'b str]) -> Option<&'b str> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != *cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    }
    candidates
        .iter()
        .map(|c| (dist(word, c), *c))
        .filter(|(d, _)| *d <= 2.max(word.len() / 4))
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_typo_finds_its_word_and_nonsense_finds_nothing() {
        let words = ["Europe/Berlin", "Europe/Bern", "UTC"];
        assert_eq!(
            super::closest("Europe/Berln", &words),
            Some("Europe/Berlin")
        );
        assert_eq!(super::closest("Mars/Olympus", &words), None);
    }
}
