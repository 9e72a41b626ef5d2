//! User names as an operator reads them: the characters that make a name in
//! a file something other than what the screen shows.
//!
//! A line `\u{feff}alice:…` (a byte-order mark an editor saved), or
//! `alice\u{200b}:…` (a zero-width space pasted from a web page), looks like
//! alice's line but names another string; pam_yubico would match it against
//! nothing, and alice would be "a user without keys". The daemon refuses such
//! a name and fails closed for the user the operator meant
//! ([`visible_part`]); `ykadmin` refuses to write or edit one.

/// Whether `c`, in a user name, is not what the reader sees: white space,
/// a control character (C0, DEL, C1), or a character that renders as
/// nothing: format characters (soft hyphen, byte-order mark, zero-width
/// space and joiners, word joiner and invisible operators, bidirectional
/// controls, tags, interlinear annotation), variation selectors, the
/// combining grapheme joiner, and the Hangul and Khmer fillers.
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// The first character of `name` that [`is_invisible`], with its byte
/// offset.
pub fn first_invisible(name: &str) -> Option<(usize, char)> {
    name.char_indices().find(|&(_, c)| is_invisible(c))
}

/// `name` without the characters that [`is_invisible`]: the name the
/// reader sees, so the user an operator meant.
pub fn visible_part(name: &str) -> String {
    name.chars().filter(|&c| !is_invisible(c)).collect()
}

/// A description of an invisible character for an error message, e.g.
/// `U+FEFF at byte 0`.
pub fn describe(offset: usize, c: char) -> String {
    format!("U+{:04X} at byte {offset}", u32::from(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_joiners_controls_and_spaces_are_invisible() {
        for c in [
            '\u{feff}',
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{2060}',
            '\u{00ad}',
            '\u{202e}',
            '\u{0}',
            '\u{7}',
            '\u{1b}',
            '\u{7f}',
            '\u{85}',
            '\u{9f}',
            ' ',
            '\t',
            '\u{a0}',
            '\u{3000}',
            '\u{e0041}',
            '\u{fe0f}',
        ] {
            assert!(is_invisible(c), "{:?}", c);
        }
        for c in ['a', 'Z', '0', '-', '_', '.', '@', '$', 'é', 'ß', 'ж'] {
            assert!(!is_invisible(c), "{c:?}");
        }
    }

    #[test]
    fn the_visible_part_is_the_name_meant() {
        assert_eq!(visible_part("\u{feff}alice"), "alice");
        assert_eq!(visible_part("al\u{200b}ice\u{7f}"), "alice");
        assert_eq!(visible_part("alice"), "alice");
        assert_eq!(first_invisible("bob\u{200d}"), Some((3, '\u{200d}')));
        assert_eq!(first_invisible("bob"), None);
        assert_eq!(describe(0, '\u{feff}'), "U+FEFF at byte 0");
    }
}
