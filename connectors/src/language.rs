//! Language of a message when the platform gives none, detected with `whatlang` (trigram and
//! script based, no model files), as a BCP 47 primary tag. Only reliable detections are used:
//! a routing rule on a wrong language is worse than one on no language.

/// The BCP 47 tag of `text`'s language, when whatlang is confident.
pub fn detect(text: &str) -> Option<String> {
    let info = whatlang::detect(text)?;
    if !info.is_reliable() {
        return None;
    }
    bcp47(info.lang().code()).map(str::to_owned)
}

/// ISO 639-3 (whatlang's codes) to the shortest BCP 47 tag (ISO 639-1 where one exists).
fn bcp47(iso639_3: &str) -> Option<&'static str> {
    Some(match iso639_3 {
        "afr" => "af",
        "aka" => "ak",
        "amh" => "am",
        "ara" => "ar",
        "aze" => "az",
        "bel" => "be",
        "ben" => "bn",
        "bul" => "bg",
        "cat" => "ca",
        "ces" => "cs",
        "cmn" => "zh",
        "dan" => "da",
        "deu" => "de",
        "ell" => "el",
        "eng" => "en",
        "epo" => "eo",
        "est" => "et",
        "fin" => "fi",
        "fra" => "fr",
        "guj" => "gu",
        "heb" => "he",
        "hin" => "hi",
        "hrv" => "hr",
        "hun" => "hu",
        "ind" => "id",
        "ita" => "it",
        "jav" => "jv",
        "jpn" => "ja",
        "kan" => "kn",
        "kat" => "ka",
        "khm" => "km",
        "kor" => "ko",
        "lat" => "la",
        "lav" => "lv",
        "lit" => "lt",
        "mal" => "ml",
        "mar" => "mr",
        "mkd" => "mk",
        "mya" => "my",
        "nep" => "ne",
        "nld" => "nl",
        "nob" => "nb",
        "ori" => "or",
        "pan" => "pa",
        "pes" => "fa",
        "pol" => "pl",
        "por" => "pt",
        "ron" => "ro",
        "rus" => "ru",
        "sin" => "si",
        "slk" => "sk",
        "slv" => "sl",
        "sna" => "sn",
        "spa" => "es",
        "srp" => "sr",
        "swe" => "sv",
        "tam" => "ta",
        "tel" => "te",
        "tha" => "th",
        "tuk" => "tk",
        "tur" => "tr",
        "ukr" => "uk",
        "urd" => "ur",
        "uzb" => "uz",
        "vie" => "vi",
        "yid" => "yi",
        "zul" => "zu",
        "hye" => "hy",
        "tgl" => "tl",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_common_buyer_languages_and_declines_when_unsure() {
        assert_eq!(detect("Bonjour, je voudrais un devis pour mille pièces livrées à Lyon").as_deref(), Some("fr"));
        assert_eq!(detect("Hallo, können Sie 500 Stück nach Hamburg liefern?").as_deref(), Some("de"));
        assert_eq!(detect("¿Tienen envío a Madrid? Necesito veinte unidades").as_deref(), Some("es"));
        assert_eq!(detect("この商品の在庫はありますか？").as_deref(), Some("ja"));
        assert_eq!(detect("ok"), None, "too short to be sure");
    }

    #[test]
    fn every_whatlang_language_has_a_tag() {
        for lang in whatlang::Lang::all() {
            assert!(bcp47(lang.code()).is_some(), "{} has no BCP 47 tag", lang.code());
        }
    }
}
