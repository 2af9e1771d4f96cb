//! `report`: the self-contained HTML page, read as markup and opened in a real
//! headless browser (Debian's chromium).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Builder, analyze, s, spread};

/// The result of a real run of loadgen against smtp-server, kept by the report crate.
fn real_result() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../report/tests/fixtures/stampede/v1-before-tls.json")
}

/// A run with every section: two servers, failures, corrected latency, resources.
fn rich_run(latencies_us: &[u64]) -> Builder {
    let mut b = Builder::burst(latencies_us, 20.0).failing_last(6);
    b.corrected_extra_us = Some(1_500);
    b.resources = true;
    b
}

/// Writes the report of `files` to `dir/report.html` and returns the page.
fn report(dir: &Path, files: &[&Path]) -> String {
    let out = dir.join("report.html");
    let mut args = vec!["report"];
    args.extend(files.iter().map(|p| s(p)));
    args.extend(["-o", s(&out)]);
    let run = analyze(&args);
    assert_eq!(run.code, 0, "stdout {}\nstderr {}", run.stdout, run.stderr);
    assert!(run.stdout.contains("wrote"), "{}", run.stdout);
    std::fs::read_to_string(&out).unwrap()
}

/// Elements HTML closes by itself.
const VOID: [&str; 6] = ["meta", "br", "hr", "img", "input", "link"];

/// A start tag: its element name and everything between `<` and `>`.
struct StartTag {
    name: String,
    text: String,
}

/// Checks that every element is closed, in order, and returns the start tags.
/// Raw text (the style sheet) is skipped to its end tag.
fn balanced_tags(html: &str) -> Vec<StartTag> {
    let mut open: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt..];
        let gt = rest
            .find('>')
            .unwrap_or_else(|| panic!("unclosed tag at {:?}", &rest[..rest.len().min(60)]));
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        if tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let top = open
                .pop()
                .unwrap_or_else(|| panic!("</{name}> closes nothing"));
            assert_eq!(top, name.trim(), "</{name}> closes <{top}>");
            continue;
        }
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        assert!(!name.is_empty(), "a bare '<' in the text: <{tag}>");
        seen.push(StartTag {
            name: name.clone(),
            text: tag.to_string(),
        });
        if tag.ends_with('/') || VOID.contains(&name.as_str()) {
            continue;
        }
        if name == "style" {
            let end = rest.find("</style>").expect("the style sheet ends");
            rest = &rest[end + "</style>".len()..];
            continue;
        }
        open.push(name);
    }
    assert!(open.is_empty(), "left open: {open:?}");
    seen
}

fn count(tags: &[StartTag], name: &str) -> usize {
    tags.iter().filter(|t| t.name == name).count()
}

/// Nothing in the page can make a browser fetch: no element that loads
/// something, no attribute that names a source, no URL in the style, and (the
/// fixtures having none in their text) no URL at all.
fn assert_self_contained(html: &str) {
    let lower = html.to_ascii_lowercase();
    for fetcher in ["url(", "@import", "http://", "https://", "//www."] {
        assert!(!lower.contains(fetcher), "the page holds {fetcher:?}");
    }
    for tag in balanced_tags(html) {
        assert!(
            ![
                "script", "link", "img", "iframe", "object", "embed", "image", "use"
            ]
            .contains(&tag.name.as_str()),
            "the page has a <{}> element",
            tag.name
        );
        for attribute in [" src=", " href=", " xlink:href=", " srcset=", " action="] {
            assert!(
                !tag.text.to_ascii_lowercase().contains(attribute),
                "<{}>",
                tag.text
            );
        }
    }
}

#[test]
fn one_real_run_gives_every_table_and_chart_and_nothing_to_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let html = report(dir.path(), &[&real_result()]);
    let tags = balanced_tags(&html);
    assert_self_contained(&html);
    assert!(html.starts_with("<!DOCTYPE html>"));
    // The real run has a timeline, histograms, per-phase and per-server figures
    // and no container samples: four charts, and a note for the fifth.
    assert_eq!(count(&tags, "svg"), 4, "charts");
    for name in ["throughput", "latency", "spectrum", "servers"] {
        assert!(
            html.contains(&format!("<figcaption>{name}</figcaption>")),
            "{name}"
        );
    }
    assert!(
        html.contains("Left out: resources: no input has server CPU/memory samples"),
        "the missing chart is explained"
    );
    for caption in ["config", "messages", "performance"] {
        assert!(
            html.contains(&format!("<caption>{caption}</caption>")),
            "{caption}"
        );
    }
    for header in ["latency", "phase", "server", "reply / error"] {
        assert!(
            html.contains(&format!("<th>{header}</th>")),
            "table {header}"
        );
    }
    // Figures as `show` prints them: 30 messages, all answered 250, the phases.
    assert!(html.contains("<tr><td>250</td><td>30</td><td>100.00%</td></tr>"));
    assert!(html.contains("<tr><td>total</td><td>30</td></tr>"));
    assert!(html.contains("<td>127.0.0.1:42873</td>"));
    for phase in [
        "connect", "banner", "ehlo", "mail", "rcpt", "data", "eod", "quit",
    ] {
        assert!(
            html.contains(&format!("<tr><td>{phase}</td>")),
            "phase {phase}"
        );
    }
    // config, messages, performance, latency, phases, servers, replies.
    assert_eq!(count(&tags, "table"), 7);
    assert!(html.contains("The run's configuration as recorded"));
}

#[test]
fn strings_from_the_file_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = rich_run(&spread(200, 1_000, 9_000));
    b.test_type = "<script>alert('type')</script>".into();
    b.servers = vec!["<img src=x onerror=alert(1)>:25".into(), "a&b:25".into()];
    b.host = "\"><script>alert('host')</script>".into();
    let path = b.write(dir.path(), "hostile.json");
    let html = report(dir.path(), &[&path]);
    balanced_tags(&html);
    assert_self_contained(&html);
    assert!(html.contains("&lt;script&gt;alert(&#39;type&#39;)&lt;/script&gt;"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;:25"));
    assert!(html.contains("a&amp;b:25"));
    assert!(html.contains("&quot;&gt;&lt;script&gt;alert(&#39;host&#39;)"));

    // The file name is a title, a heading and the charts' legend.
    let odd = dir.path().join("<i>odd&name.json");
    std::fs::copy(&path, &odd).unwrap();
    let html = report(dir.path(), &[&odd]);
    balanced_tags(&html);
    assert!(html.contains("<title>Stampede report: &lt;i&gt;odd&amp;name</title>"));
    assert!(!html.contains("<i>"));
}

#[test]
fn several_runs_give_a_comparison_and_a_section_each() {
    let dir = tempfile::tempdir().unwrap();
    let base = rich_run(&spread(300, 1_000, 10_000)).write(dir.path(), "base.json");
    // Every latency doubled: a regression of p50 and p99 past the 5% default.
    let new = rich_run(&spread(300, 2_000, 20_000)).write(dir.path(), "new.json");
    let html = report(dir.path(), &[&base, &new]);
    let tags = balanced_tags(&html);
    assert_self_contained(&html);
    assert!(html.contains("<h2>Comparison</h2>"));
    assert!(html.contains("<h3>base → new</h3>"));
    assert!(html.contains("<th>verdict</th>"));
    let p99 = html
        .lines()
        .find(|l| l.contains("<td>latency p99 (ms)</td>"))
        .expect("a p99 row");
    assert!(
        p99.starts_with("<tr class=\"bad\">") && p99.contains("REGRESSION"),
        "{p99}"
    );
    assert!(html.contains("Regression in "));
    assert!(html.contains("<h2>Run base</h2>") && html.contains("<h2>Run new</h2>"));
    // One set of overlaid charts, each run's tables.
    assert_eq!(
        count(&tags, "svg"),
        5,
        "throughput, latency, spectrum, servers, resources"
    );
    assert_eq!(html.matches("<caption>config</caption>").count(), 2);
    assert_eq!(html.matches("<th>server resources</th>").count(), 2);
}

#[test]
fn a_stages_key_is_shown_as_a_table_when_present() {
    let dir = tempfile::tempdir().unwrap();
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(real_result()).unwrap()).unwrap();
    let latency = |p99: f64| {
        serde_json::json!({"avg": 1.0, "min": 0.5, "max": p99, "p50": 1.0, "p90": 2.0,
                           "p95": 3.0, "p99": p99, "p99_9": p99})
    };
    // The stages helper's layout (`report::StageSummary`): encoded histograms
    // are left out of the table.
    let empty = report::encode_histogram(&report::new_latency_histogram()).unwrap();
    let histograms = serde_json::json!({"total": empty, "corrected": empty});
    value["stages"] = serde_json::json!([
        {"index": 0, "start_s": 0.0, "end_s": 5.0, "rate_from": 0.0, "rate_to": 100.0,
         "sent": 250, "ok": 250, "failed": 0, "late": 0, "latency_ms": latency(4.5),
         "latency_corrected_ms": latency(5.5), "histograms": histograms},
        {"index": 1, "start_s": 5.0, "end_s": 15.0, "rate_from": 100.0, "rate_to": 100.0,
         "sent": 1000, "ok": 997, "failed": 3, "late": 2, "latency_ms": latency(7.25),
         "latency_corrected_ms": latency(9.5), "histograms": histograms}
    ]);
    let path = dir.path().join("staged.json");
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    let html = report(dir.path(), &[&path]);
    balanced_tags(&html);
    assert!(html.contains("<h3>stages</h3>"));
    for th in [
        "index",
        "start_s",
        "rate_from",
        "rate_to",
        "sent",
        "late",
        "latency_ms",
    ] {
        assert!(
            html.contains(&format!("<th>{th}</th>")),
            "stage column {th}"
        );
    }
    assert!(
        html.contains(
            "<tr><td>1</td><td>5</td><td>15</td><td>100</td><td>100</td><td>1000</td>\
         <td>997</td><td>3</td><td>2</td><td>p50 1.00 / p99 7.25</td>\
         <td>p50 1.00 / p99 9.50</td></tr>"
        ),
        "{html}"
    );

    // A file without the key has no such section.
    let plain = report(dir.path(), &[&real_result()]);
    assert!(!plain.contains("<h3>stages</h3>"));
}

#[test]
fn a_tls_run_shows_what_its_handshakes_negotiated() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rich_run(&spread(100, 1_000, 5_000)).build();
    r.tls = Some(report::TlsSummary {
        mode: "starttls".into(),
        versions: [("TLSv1.3".to_string(), 40)].into(),
        cipher_suites: [("TLS13_AES_128_GCM_SHA256".to_string(), 40)].into(),
        handshakes: 40,
        resumed: 10,
    });
    let path = dir.path().join("tls.json");
    r.save(&path).unwrap();
    let html = report(dir.path(), &[&path]);
    balanced_tags(&html);
    assert!(html.contains("<caption>tls</caption>"));
    assert!(html.contains("<tr><td>mode</td><td>starttls</td></tr>"));
    assert!(html.contains("<tr><td>resumed</td><td>10 (25.00%)</td></tr>"));
    assert!(html.contains("<tr><td>TLSv1.3</td><td>40 (100.00%)</td></tr>"));
}

#[test]
fn a_prixfixe_file_shows_its_headline_figures_and_says_what_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let html = report(
        dir.path(),
        &[&common::prixfixe("v0.2.0-burst-small-1k.json")],
    );
    balanced_tags(&html);
    assert_self_contained(&html);
    assert!(html.contains("PrixFixe v0.2 (legacy) file: headline figures only"));
    assert!(html.contains("<tr><td>total</td><td>1000</td></tr>"));
    // Its spectrum is drawn through the summary percentiles; the rest is noted.
    assert!(html.contains("<figcaption>spectrum</figcaption>"));
    assert!(html.contains("Left out: v0.2.0-burst-small-1k: no timeline"));
}

#[test]
fn an_unreadable_file_exits_2_naming_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.json");
    std::fs::write(&bad, "{\"schema\": \"stampede.result.v1\", \"test_").unwrap();
    let out = dir.path().join("report.html");
    let run = analyze(&["report", s(&real_result()), s(&bad), "-o", s(&out)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("broken.json"), "{}", run.stderr);
    assert!(!out.exists());

    let missing = dir.path().join("missing.json");
    let run = analyze(&["report", s(&missing), "-o", s(&out)]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("missing.json"), "{}", run.stderr);

    let run = analyze(&["report", s(&real_result())]);
    assert_eq!(run.code, 2, "-o is required: {}", run.stderr);
}

#[test]
fn the_page_replaces_an_old_one_whole() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.html");
    std::fs::write(&out, "an older, longer page ".repeat(10_000)).unwrap();
    let html = report(dir.path(), &[&real_result()]);
    assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["report.html"], "no temporary file is left behind");
}

// ---- In a real browser ----

/// What a headless chromium run left behind.
struct Rendered {
    png: PathBuf,
    /// URLs the page itself asked for (not the browser's own background requests).
    page_requests: Vec<String>,
}

/// Whether chromium is here; when it is not, the test prints SKIP and passes,
/// unless `STAMPEDE_REQUIRE_CHROMIUM=1` asks for it.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var("STAMPEDE_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "STAMPEDE_REQUIRE_CHROMIUM=1 but no chromium on PATH"
        );
        println!("SKIP: no chromium on PATH; the page was not opened in a browser");
    }
    found
}

/// How long one chromium run may take on a loaded 2-core machine.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// Opens `page` in headless chromium, takes a `size` screenshot and records its
/// network log. No name resolves (`MAP * ~NOTFOUND`), so nothing leaves the
/// machine whatever the page asked for; the net log shows what it asked for.
fn render(browser: &Path, page: &Path, size: (u32, u32), work: &Path) -> Rendered {
    let png = work.join("shot.png");
    let netlog = work.join("netlog.json");
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--force-color-profile=srgb",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ])
    .arg(format!(
        "--user-data-dir={}",
        work.join("profile").display()
    ))
    .arg(format!("--log-net-log={}", netlog.display()))
    .arg(format!("--screenshot={}", png.display()))
    .arg(format!("--window-size={},{}", size.0, size.1))
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // Its own process group, so a hung browser is ended with all its children
    // and nothing else.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("chromium starts");
    // std has no wait with a timeout: poll the exit, bounded by the deadline.
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!("chromium took longer than {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "chromium: {status}");
    Rendered {
        page_requests: page_requests(&netlog),
        png,
    }
}

/// The URLs requested on behalf of a `file://` page, from chromium's net log.
/// The browser's own requests (component updates, account checks) carry no
/// page in their network isolation key and are not the page's doing.
fn page_requests(netlog: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(netlog).expect("chromium wrote its net log");
    let log: serde_json::Value = serde_json::from_str(&text).expect("the net log is JSON");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_u64()
        .expect("the net log names URL_REQUEST_START_JOB");
    let events = log["events"].as_array().expect("the net log has events");
    events
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start_job))
        .filter_map(|e| {
            let p = &e["params"];
            let url = p["url"].as_str()?;
            let from_page = p["network_isolation_key"]
                .as_str()
                .is_some_and(|k| k.starts_with("file://"))
                || p["initiator"].as_str() == Some("null");
            (from_page && !url.starts_with("file:")).then(|| url.to_string())
        })
        .collect()
}

/// Width, height and RGB pixels of a PNG.
fn pixels(png_path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).expect("the screenshot"));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).expect("PNG data");
    let step = match frame.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected colour type {other:?}"),
    };
    let px = buf[..frame.buffer_size()]
        .chunks_exact(step)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (frame.width, frame.height, px)
}

/// The first series colour of the charts (Okabe-Ito blue).
const SERIES_BLUE: [u8; 3] = [0, 114, 178];

#[test]
fn the_page_renders_in_chromium_with_its_charts_and_fetches_nothing() {
    let Some(browser) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();

    // The detector first: a page with one remote image is caught asking for it.
    let control = dir.path().join("control.html");
    std::fs::write(
        &control,
        "<!DOCTYPE html><html><body><p>control</p>\
         <img src=\"http://stampede-control.example/pixel.png\"></body></html>",
    )
    .unwrap();
    let work = dir.path().join("control-run");
    std::fs::create_dir_all(&work).unwrap();
    let shown = render(&browser, &control, (400, 300), &work);
    assert_eq!(
        shown.page_requests,
        ["http://stampede-control.example/pixel.png"],
        "the net log shows a page's request"
    );

    // The report of a run with every section.
    let run = rich_run(&spread(600, 800, 30_000)).write(dir.path(), "synthetic-burst.json");
    report(dir.path(), &[&run]);
    let page = dir.path().join("report.html");
    let work = dir.path().join("report-run");
    std::fs::create_dir_all(&work).unwrap();
    let size = (1280, 1400);
    let shown = render(&browser, &page, size, &work);
    assert!(
        shown.page_requests.is_empty(),
        "the page asked for {:?}",
        shown.page_requests
    );

    let (w, h, px) = pixels(&shown.png);
    assert_eq!((w, h), size, "the screenshot has the window's size");
    let background = px[0];
    let other = px.iter().filter(|p| **p != background).count();
    assert!(
        other * 10 > px.len(),
        "only {other} of {} pixels differ from the background: an empty page",
        px.len()
    );
    let colours: std::collections::HashSet<[u8; 3]> = px.iter().copied().collect();
    assert!(
        colours.len() > 50,
        "{} colours: no text or chart",
        colours.len()
    );
    // The charts' lines and bars were drawn, not just their frames.
    let blue = px.iter().filter(|p| **p == SERIES_BLUE).count();
    assert!(blue > 2_000, "{blue} pixels of the series colour");

    if let Some(keep) = std::env::var_os("STAMPEDE_REPORT_SCREENSHOT") {
        std::fs::copy(&shown.png, &keep).expect("copy the screenshot");
    }
}
