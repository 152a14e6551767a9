//! Reading a WebAssembly binary's layout without a parser crate: LEB128, sections, and a
//! component's top-level import names. Used where bytes must be judged before anything else
//! touches them (signature layout, a handler's imports before it is compiled).

/// A LEB128 u32 at `*at`, advancing it.
pub(crate) fn leb_u32(b: &[u8], at: &mut usize) -> Option<u32> {
    let mut v: u32 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u32::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One section of a module or component, as laid out in the file.
pub(crate) struct RawSection<'a> {
    pub id: u8,
    /// The name, for a custom section (id 0).
    pub name: Option<&'a [u8]>,
    /// What follows the name (custom) or the size (others).
    pub payload: &'a [u8],
    /// The offset just past the section.
    pub end: usize,
}

/// The section starting at `at`; `None` when it is cut short or malformed.
pub(crate) fn section(b: &[u8], at: usize) -> Option<RawSection<'_>> {
    let mut p = at;
    let id = *b.get(p)?;
    p += 1;
    let size = leb_u32(b, &mut p)? as usize;
    let end = p.checked_add(size).filter(|&e| e <= b.len())?;
    if id != 0 {
        return Some(RawSection {
            id,
            name: None,
            payload: &b[p..end],
            end,
        });
    }
    let name_len = leb_u32(b, &mut p)? as usize;
    let name_end = p.checked_add(name_len).filter(|&e| e <= end)?;
    Some(RawSection {
        id,
        name: Some(&b[p..name_end]),
        payload: &b[name_end..end],
        end,
    })
}

/// The component import section's id (the component binary format).
const COMPONENT_IMPORT_SECTION: u8 = 10;
/// The component binary's version/layer word: version 0x0d, layer 1.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// A (s)LEB128 number at `*at`, skipped.
fn skip_leb(b: &[u8], at: &mut usize) -> Option<()> {
    for _ in 0..5 {
        let byte = *b.get(*at)?;
        *at += 1;
        if byte & 0x80 == 0 {
            return Some(());
        }
    }
    None
}

/// A length-prefixed UTF-8 string at `*at`.
fn string<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a str> {
    let len = leb_u32(b, at)? as usize;
    let end = at.checked_add(len).filter(|&e| e <= b.len())?;
    let s = std::str::from_utf8(&b[*at..end]).ok()?;
    *at = end;
    Some(s)
}

/// Skips one `externdesc`.
fn skip_externdesc(b: &[u8], at: &mut usize) -> Option<()> {
    let sort = *b.get(*at)?;
    *at += 1;
    match sort {
        // core module: 0x11, then a core type index
        0x00 => {
            (*b.get(*at)? == 0x11).then_some(())?;
            *at += 1;
            skip_leb(b, at)
        }
        // func, component, instance: a type index
        0x01 | 0x04 | 0x05 => skip_leb(b, at),
        // value bound, type bound: 0x00 + index, or 0x01 (+ a value type for values)
        0x02 | 0x03 => {
            let bound = *b.get(*at)?;
            *at += 1;
            match (sort, bound) {
                (_, 0x00) | (0x02, 0x01) => skip_leb(b, at),
                (0x03, 0x01) => Some(()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The names a component imports at its top level (nested components and modules are inside
/// other sections), in order; `None` for anything that is not a well-formed component.
pub fn component_imports(b: &[u8]) -> Option<Vec<String>> {
    if b.get(..8)? != COMPONENT_HEADER {
        return None;
    }
    let mut names = Vec::new();
    let mut at = 8;
    while at < b.len() {
        let s = section(b, at)?;
        if s.id == COMPONENT_IMPORT_SECTION {
            let p = s.payload;
            let mut i = 0;
            for _ in 0..leb_u32(p, &mut i)? {
                let form = *p.get(i)?;
                i += 1;
                names.push(string(p, &mut i)?.to_owned());
                if form == 0x01 {
                    string(p, &mut i)?; // a version suffix
                } else if form != 0x00 {
                    return None;
                }
                skip_externdesc(p, &mut i)?;
            }
        }
        at = s.end;
    }
    Some(names)
}
