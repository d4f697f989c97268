"""Texts of the console's pages, Japanese first and English second. Keys not here are
the resident pages' (:mod:`maild.web.i18n`: the area picker, the error pages)."""

from __future__ import annotations

from maild.web.i18n import plain
from maild.web.i18n import text as web_text

TEXTS: dict[str, tuple[str, str]] = {
    "console": ("承認コンソール", "Approvers' console"),
    "switch_lang": ("English", "日本語"),
    "nav_queue": ("承認・送信待ち", "Queue"),
    "nav_history": ("送信履歴", "History"),
    "nav_compose": ("新しい依頼", "New request"),
    "nav_subscribers": ("登録者数", "Subscribers"),
    "sign_out": ("ログアウト", "Sign out"),
    "signed_in_as": ("{name}（{role}）", "{name} ({role})"),
    "role_operator": ("発信担当者", "operator"),
    "role_approver": ("運用責任者", "approver"),
    "role_admin": ("システム管理者", "admin"),
    # the area picker, worded for the person sending rather than receiving
    "areas_legend": ("配信エリア", "Areas"),
    "areas_hint": (
        "いくつでも選べます。ブロック名を押すと、そのブロックの警察署と市区町村が表示されます。",
        "Choose as many as needed. Open a block to show its police stations and municipalities.",
    ),
    # --- sign-in
    "sign_in_title": ("ログイン", "Sign in"),
    "name_label": ("アカウント名", "Account name"),
    "password_label": ("パスワード", "Password"),
    "code_label": ("認証コード（6桁）", "Authentication code (6 digits)"),
    "code_hint": (
        "運用責任者・システム管理者は、認証アプリに表示される6桁の数字を入力してください。",
        "Approvers and admins: enter the 6 digits your authenticator app shows.",
    ),
    "sign_in": ("ログイン", "Sign in"),
    "sign_in_failed": (
        "アカウント名、パスワードまたは認証コードが違います。",
        "The account name, password or code is wrong.",
    ),
    "sign_in_locked": (
        "失敗が続いたため、このアカウントは15分間ログインできません。",
        "After repeated failures this account cannot sign in for 15 minutes.",
    ),
    "signed_out": ("ログアウトしました。", "You have signed out."),
    "session_ended": (
        "ログインの有効期限（操作がないまま30分）が切れました。もう一度ログインしてください。",
        "Your session has ended (30 minutes without use). Please sign in again.",
    ),
    # --- queue
    "queue_title": ("承認・送信待ちの警報", "Alerts waiting"),
    "queue_empty": ("待っている警報はありません。", "No alert is waiting."),
    "col_id": ("番号", "No."),
    "col_subject": ("件名", "Subject"),
    "col_status": ("状態", "Status"),
    "col_requester": ("依頼者", "Requested by"),
    "col_time": ("受付・送信予定", "Received / sends at"),
    "col_areas": ("配信エリア", "Areas"),
    "col_category": ("情報種別", "Category"),
    "col_hours": ("受信時間帯", "Receiving hours"),
    "col_urgent": ("緊急", "Urgent"),
    "col_recipients": ("現在の送信先", "Recipients now"),
    "urgent_yes": ("緊急", "urgent"),
    "status_pending_approval": ("承認待ち", "waiting for approval"),
    "status_scheduled": ("送信予定", "scheduled"),
    "status_sending": ("送信中", "sending"),
    "status_sent": ("送信済み", "sent"),
    "status_cancelled": ("取り消し", "cancelled"),
    "status_failed": ("送信失敗", "failed"),
    "count": ("{count} 件", "{count}"),
    # --- one alert
    "alert_title": ("警報 {id}: {subject}", "Alert {id}: {subject}"),
    "subject": ("件名", "Subject"),
    "body": ("本文", "Body"),
    "sender": ("発信者", "Sender"),
    "send_after": ("送信開始日時の指定", "Send after"),
    "release_at": ("送信予定", "Sends at"),
    "approved_by": ("承認者", "Approved by"),
    "none": ("なし", "none"),
    "legacy_heading": (
        "古い携帯電話（ISO-2022-JP）での表示",
        "On older phones (ISO-2022-JP)",
    ),
    "legacy_same": (
        "置き換える文字はありません。古い携帯電話にもこのとおり届きます。",
        "No character is replaced: older phones get it as it is.",
    ),
    "legacy_mapped": ("置き換える文字:", "Characters replaced:"),
    "legacy_problems": (
        "古い携帯電話に送れない文字があります"
        "（古い携帯電話のドメインを設定していると送れません）: {chars}",
        "Characters older phones cannot get (refused where legacy domains are set): {chars}",
    ),
    "areas_heading": ("配信エリアと現在の送信先", "Areas and their recipients now"),
    "total": ("合計（重複を除く）", "Total (each person once)"),
    "progress": (
        "送信済み {sent} 件・再送待ち {deferred} 件・失敗 {failed} 件・未送信 {queued} 件"
        "・時間帯待ち {held} 件",
        "{sent} sent, {deferred} deferred, {failed} failed, {queued} to go,"
        " {held} held for residents' own hours",
    ),
    "auto_on": (
        "進み具合を自動で更新する（{seconds}秒ごと）",
        "Refresh the progress every {seconds} s",
    ),
    "auto_off": ("自動更新を止める", "Stop refreshing"),
    "audit_heading": ("操作の記録", "Audit log"),
    "col_at": ("日時", "When"),
    "col_action": ("操作", "Action"),
    "col_user": ("操作した人", "Who"),
    "col_detail": ("内容", "Detail"),
    "action_submitted": ("依頼", "requested"),
    "action_changed": ("修正", "changed"),
    "action_approved": ("承認", "approved"),
    "action_send-now": ("今すぐ送信", "send now"),
    "action_cancelled": ("取り消し", "cancelled"),
    "action_released": ("送信開始", "released"),
    "action_recipients": ("送信先確定", "recipients written"),
    "action_finished": ("送信完了", "finished"),
    "action_refused": ("拒否（権限なし）", "refused (no permission)"),
    "actions_heading": ("操作", "Actions"),
    "do_adjust": ("内容・配信エリアを修正", "Change text or areas"),
    "do_approve": ("承認する", "Approve"),
    "do_send-now": ("今すぐ送信", "Send now"),
    "do_cancel": ("取り消す", "Cancel the alert"),
    "own_request": (
        "ご自身の依頼は承認できません（運用要領 5(1)）。他の運用責任者に承認を依頼してください。",
        "You cannot approve your own request: ask another approver.",
    ),
    # --- adjust
    "adjust_title": ("警報 {id} の修正", "Change alert {id}"),
    "adjust_intro": (
        "変更した内容は、変更前と変更後の差分とともに操作の記録に残り、承認する人に表示されます。",
        "Each change goes into the audit log with its before and after, shown to the approver.",
    ),
    "urgent_label": ("緊急（送信時間帯の外でも送る）", "Urgent (sent outside the window too)"),
    "send_after_label": ("送信開始日時（空欄: 指定なし）", "Send after (empty: none)"),
    "category_label": ("情報種別", "Category"),
    "save": ("修正を保存", "Save the changes"),
    "bad_datetime": (
        "送信開始日時は 2026-12-07 09:00 の形で書いてください。",
        "Write the send-after time as 2026-12-07 09:00.",
    ),
    # --- confirm
    "confirm_title": ("確認: {what}", "Confirm: {what}"),
    "confirm_now": (
        "送信先 {count} 件、今すぐ送信されます。",
        "{count} recipients; it will be sent now.",
    ),
    "confirm_at": (
        "送信先 {count} 件、{when} に送信されます。",
        "{count} recipients; it will be sent at {when}.",
    ),
    "confirm_cancel": (
        "この警報を取り消します。まだ送っていない送信先には送られません。",
        "The alert is cancelled: nobody not yet reached will get it.",
    ),
    "confirm_cancel_sending": (
        "送信を止めます。送信済みの {sent} 件は取り消せません。",
        "Sending stops. The {sent} mails already sent cannot be recalled.",
    ),
    "confirm_button": ("はい、{what}", "Yes: {what}"),
    "back": ("戻る", "Back"),
    # --- the privacy check (issue 17)
    "privacy_heading": ("個人が特定されるおそれのある記載", "What may identify someone"),
    "privacy_intro": (
        "{count} 件見つかりました（本文の印の箇所）。運用要領 7 に沿って、被害者や関係者が"
        "特定されないか確かめてください。直すときは「内容・配信エリアを修正」から。",
        "{count} found (marked in the text). Check, as operating rules §7 ask, that no victim "
        "or anyone involved can be identified; to change the text, use 「Change text or areas」.",
    ),
    "privacy_suggest": ("例えば「{suggestion}」", "e.g. 「{suggestion}」"),
    "privacy_ack": (
        "上の記載を確かめ、このまま送ってよいと判断しました",
        "I have checked what is listed above and judge the alert fit to send as it is",
    ),
    "done_adjust": (
        "修正しました。変更前と変更後は操作の記録にあります。",
        "Changed. The before and after are in the audit log.",
    ),
    "done_approve": ("承認しました。", "Approved."),
    "done_send-now": ("今すぐ送信するよう指示しました。", "It is being released now."),
    "done_cancel": ("取り消しました。", "Cancelled."),
    "refused_title": ("この操作の権限がありません", "You may not do this"),
    "refused_body": (
        "この操作には運用責任者の役割が必要です。この試みは記録されました。",
        "This needs the approver role. The attempt has been recorded.",
    ),
    "no_account": (
        "このコンソールにあなたのアカウントがありません。システム管理者に依頼してください。",
        "You have no account on this console; ask the system administrator.",
    ),
    "refused_compose": (
        "配信の依頼には発信担当者か運用責任者の役割が必要です。",
        "A request needs the operator or approver role.",
    ),
    "action_failed_title": ("この操作はできませんでした", "This could not be done"),
    "to_alert": ("警報の画面へ", "Back to the alert"),
    # --- compose
    "compose_title": ("新しい配信依頼", "New request"),
    "compose_intro": (
        "警報ファイルと同じ規則で確かめてから受け付けます。承認が必要な場合は承認待ちになります。",
        "Checked by the same rules as an alert file; where approval is needed it waits for it.",
    ),
    "compose_submit": ("依頼する", "Submit the request"),
    "done_compose": ("受け付けました。", "Your request has been received."),
    # --- subscribers
    "subscribers_title": ("登録者数", "Subscribers"),
    "subscribers_intro": (
        "配信エリア・情報種別・受信時間帯ごとの登録者数です（登録手続き中・停止中を除く）。"
        "一人が複数を選ぶため、エリアと種別の合計は登録者数より多くなります。",
        "Active subscribers by the areas and kinds they chose and by their receiving hours;"
        " one person may choose several areas and kinds, so those rows add up to more than"
        " the people.",
    ),
    "subscribers_pending": ("手続き中", "pending"),
    "subscribers_active": ("登録済み", "active"),
    "subscribers_suspended": ("停止中", "suspended"),
    "hours_any_time": ("いつでも", "any time"),
    "hours_own": ("時間帯を決めている", "own hours"),
    "hours_urgent_too": (
        "うち緊急の情報も時間帯を待つ",
        "of whom urgent alerts wait too",
    ),
    "search_heading": (
        "登録者を探して削除する（システム管理者）",
        "Find and remove one subscriber (admins)",
    ),
    "search_label": ("メールアドレス", "Mail address"),
    "search": ("探す", "Search"),
    "search_invalid": ("メールアドレスの形式ではありません。", "This is not a mail address."),
    "search_missing": ("このアドレスは登録されていません。", "This address is not subscribed."),
    "search_found": (
        "登録されています（{status}、配信エリア: {areas}）。",
        "Subscribed ({status}; areas: {areas}).",
    ),
    "remove_subscriber": ("この登録者を削除する", "Remove this subscriber"),
    "subscriber_removed": ("削除しました", "Removed"),
    "subscriber_removed_body": ("{address} を削除しました。", "{address} has been removed."),
    "subscriber_missing": ("登録されていません", "Not subscribed"),
    "subscriber_missing_body": ("{address} は登録されていません。", "{address} is not subscribed."),
    "refused_admin": (
        "この操作にはシステム管理者の役割が必要です。",
        "This needs the admin role.",
    ),
    # --- history
    "history_title": ("送信履歴", "History"),
    "history_empty": ("送信済みの警報はありません。", "No alert has been sent yet."),
    "col_result": ("結果", "Result"),
    "filter": ("絞り込む", "Filter"),
    "all": ("すべて", "all"),
    # --- errors
    "csrf_title": ("もう一度お試しください", "Please try again"),
    "csrf_body": (
        "フォームの有効期限が切れたか、ほかのページから送信されました。何も変更していません。"
        "ページを開き直してから、もう一度操作してください。",
        "The form expired or came from another page. Nothing has changed. Open the page"
        " again and retry.",
    ),
}


def action_name(lang: str, action: str) -> str:
    """An audit action as people read it; one this table does not know, as it is."""
    key = f"action_{action}"
    return text(lang, key) if key in TEXTS else action


def text(lang: str, key: str, **values: object) -> str:
    """The text ``key`` in ``lang`` (the console's, else the resident pages')."""
    if key not in TEXTS:  # without the phrase marks of the residents' headings
        return plain(web_text(lang, key, **values))
    ja, en = TEXTS[key]
    template = en if lang == "en" else ja
    return template.format(**values) if values else template
