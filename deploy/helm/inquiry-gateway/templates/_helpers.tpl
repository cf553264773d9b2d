{{- define "inquiry-gateway.name" -}}{{ .Release.Name }}-inquiry-gateway{{- end -}}
{{- define "inquiry-gateway.labels" -}}
app.kubernetes.io/name: inquiry-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
