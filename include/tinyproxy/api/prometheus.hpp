// SPDX-License-Identifier: MIT
// Prometheus's text exposition format (version 0.0.4): metric families with their HELP and
// TYPE lines, samples with labels, label values escaped. Sans-I/O: it builds a string.
#pragma once

#include <cstdint>     // sample values
#include <string>      // the text
#include <string_view> // names, labels
#include <utility>     // std::pair: a label
#include <vector>      // a sample's labels

namespace tinyproxy {

/// One label of a sample: name and value (the value is escaped on output).
using metric_label = std::pair<std::string_view, std::string_view>;

/// Builds an exposition: call family() once per metric, then sample() for each of its series.
class prometheus_text {
public:
    /// The content type a scraper expects for this text.
    static constexpr std::string_view content_type = "text/plain; version=0.0.4; charset=utf-8";

    /// Starts a family: `type` is "counter" or "gauge".
    void family(std::string_view name, std::string_view type, std::string_view help);
    void sample(std::string_view name, const std::vector<metric_label>& labels,
                std::uint64_t value);
    const std::string& text() const noexcept { return text_; }

private:
    std::string text_;
};

/// A label value as the format writes it: backslash, double quote and line feed escaped.
inline std::string escape_label_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

inline void prometheus_text::family(std::string_view name, std::string_view type,
                                    std::string_view help) {
    // HELP text escapes backslash and line feed (not quotes).
    std::string escaped;
    for (char c : help) {
        escaped += c == '\\'   ? std::string("\\\\")
                   : c == '\n' ? std::string("\\n")
                               : std::string(1, c);
    }
    text_.append("# HELP ").append(name).append(" ").append(escaped).append("\n");
    text_.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

inline void prometheus_text::sample(std::string_view name, const std::vector<metric_label>& labels,
                                    std::uint64_t value) {
    text_.append(name);
    if (!labels.empty()) {
        text_ += '{';
        for (std::size_t i = 0; i < labels.size(); ++i) {
            text_.append(i == 0 ? "" : ",").append(labels[i].first).append("=\"");
            text_.append(escape_label_value(labels[i].second)).append("\"");
        }
        text_ += '}';
    }
    text_.append(" ").append(std::to_string(value)).append("\n");
}

} // namespace tinyproxy
